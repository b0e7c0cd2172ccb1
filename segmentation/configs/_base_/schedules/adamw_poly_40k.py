# The release's optimisation (adamw_poly_160k.py) over 40k iterations: the poly decay, validation and
# checkpoints follow the length.
_base_ = ['./adamw_poly_160k.py']
max_iters = 40000
param_scheduler = [_base_.param_scheduler[0], dict(_base_.param_scheduler[1], end=max_iters + 1)]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters // 10)
default_hooks = dict(checkpoint=dict(interval=max_iters // 10))

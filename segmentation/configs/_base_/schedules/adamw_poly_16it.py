# The release's optimisation (adamw_poly_160k.py) cut to the tests' 16 iterations: a small model from
# scratch learns fast (lr 5e-3, a 2-iteration warm-up), one validation at the end, a checkpoint every 4
# iterations (resume tests need several) and a log line every iteration.
_base_ = ['./adamw_poly_160k.py']
max_iters = 16
optim_wrapper = dict(optimizer=dict(lr=5e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=4, max_keep_ckpts=5))

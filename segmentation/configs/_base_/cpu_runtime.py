# The default runtime for runs on CPUs (the tests): no cuDNN, gloo between processes, a fixed seed.
_base_ = ['./default_runtime.py']
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)

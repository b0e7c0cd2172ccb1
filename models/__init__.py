"""The model zoo: importing ``models`` registers every model with timm.

``timm.create_model(name, ...)`` then builds any of them; ``models.load_weights`` loads release and
project checkpoints (``model`` weights unless EMA is asked for).
"""
from .topdown import TD_MODES, TOP_DOWN_MODES, TopDownAttentionMixin, TopDownMixin, TopDownMode, TopDownOutput, \
    TokenDecoder, prior_mask, reweight, top_down_mode, variational_loss
from .backbone import ModelCfg, OnePassBackbone, recorded_cfgs  # the kit of a new backbone: docs/adding_a_backbone.md
from .checkpoint import CheckpointError, CheckpointReport, adapt_state_dict, fit_checkpoint, load_checkpoint_file, \
    load_pretrained, load_weights, select_state_dict
from . import absvit
from .absvit import AbSViT
from .dat import AbSDAT, DAT  # registers dat_* and absdat_* with timm
from .fan import AbSFAN, FAN  # fan_* and absfan_*
from .rvt import AbSRVT, RVT  # rvt_* and absrvt_*
from . import ida  # ida_* (the IDA multi-label head on timm backbones)

"""Attention demos and the controllability measurement (see docs/demo.md).

``demo.common`` loads models, images and priors; ``demo.visualize`` renders attention figures (CLI and
library); ``demo.controllability`` measures how well a prior steers prediction and attention.
"""

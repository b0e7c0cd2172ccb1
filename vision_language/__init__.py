"""Vision-language sub-project: a METER-style model (text encoder, image encoder, co-attention fusion)
whose image encoder is the zoo's AbSViT, steered top-down by the text (see README.md)."""

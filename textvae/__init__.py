"""textvae: variational autoencoders of text that do not collapse.

Every remedy for posterior collapse behind one model (:class:`textvae.models.textvae.TextVAE`), one objective,
and one set of metrics (:mod:`textvae.metrics`). From Python, :func:`textvae.pretrained.load` gives a trained
model with its tokenizer, reading sentences as its run read its corpus.
"""
__version__ = "0.1.0"

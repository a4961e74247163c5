"""textvae: variational autoencoders of text that do not collapse.

Every remedy for posterior collapse behind one model (:class:`TextVAE`), one objective, and one set
of metrics (:mod:`textvae.metrics`).
"""
__version__ = "0.1.0"

"""Dialogue response generation with a conditional VAE (kgCVAE, Zhao et al. 2017).

``data``: (context, response) pairs from DailyDialog or JSONL, :class:`DialogueBatch`;
``model``: :class:`KgCVAE` (hierarchical context encoder, recognition and prior networks, decoder);
``metrics``: the responses to a split's contexts, which the registered text metrics score (the
likelihood figures are the registered metrics, through :meth:`KgCVAE.given`);
``respond``: :func:`respond` (diverse responses to a context). Training is the ``dialogue`` task
(:mod:`textvae.tasks.dialogue`) of the one training loop.
"""

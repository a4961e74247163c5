"""Remedies for KL vanishing. Importing this package registers every remedy.

beta-VAE is not a remedy: it is the ``constant`` KL schedule with ``value: beta``
(:mod:`textvae.schedules`), as are the annealing schedules (linear, sigmoid, cyclical).
"""
from textvae.remedies import (aggressive, aux_autoencoder, bn_vae, bow, data_noising, delta_vae, free_bits,
                              kl_constraint, pretraining, word_dropout, zforcing)
from textvae.remedies.base import (REMEDIES, Remedy, Trainer, check_remedies, check_remedy, combines, create_remedy,
                                   keep_procedure_state, list_remedies, register_remedy, transforms_posterior)

__all__ = ["REMEDIES", "Remedy", "Trainer", "check_remedies", "check_remedy", "combines", "create_remedy",
           "keep_procedure_state", "list_remedies", "register_remedy", "transforms_posterior",
           "aggressive", "aux_autoencoder", "bn_vae", "bow", "data_noising", "delta_vae", "free_bits",
           "kl_constraint", "pretraining", "word_dropout", "zforcing"]

"""Remedies for KL vanishing. Importing this package registers every remedy."""
from textvae.remedies.base import REMEDIES, Remedy, create_remedy, list_remedies, register_remedy

__all__ = ["REMEDIES", "Remedy", "create_remedy", "list_remedies", "register_remedy"]

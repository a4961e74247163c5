"""Model parts. Importing this package registers every encoder, decoder, posterior and prior, so any
``textvae.models.*`` import (TextVAE included) sees the full registries."""
from textvae.models import cnn, flows, priors, skip, transformer, vmf  # noqa: F401  (registration)

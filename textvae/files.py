"""One file-permission policy for everything a run writes: the mode a new file gets from the
process's umask (0644 under the usual 022), checkpoints and model weights included.

safetensors creates its files 0600; left so, a run folder's weights would be private while its
configuration, log and tokenizer are not, which protects nothing and surprises whoever shares the
run. A user who wants a private run sets the umask (``umask 077``), and every file follows it.
"""
from __future__ import annotations

import os
from pathlib import Path


def umask_mode() -> int:
    """``0o666 & ~umask``: the mode ``open()`` gives a new file in this process."""
    mask = os.umask(0)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return 0o666 & ~mask


def replace_as_new_file(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the mode of a newly created file, then rename it over ``path`` (atomically)."""
    os.chmod(tmp, umask_mode())
    os.replace(tmp, path)

"""``python -m tinyraft_trio``: the ``tinyraft-trio`` command."""

from .cli import main_entry

if __name__ == "__main__":
    main_entry()

"""One answer to a write that races another on a unique key.

A service checks that a name is free, then saves; another writer may take the name in between. The database's
unique constraint then refuses the save with an IntegrityError, which would be a 500 to the operator. Wrapped in
`taken_meanwhile`, the save runs in its own savepoint (the caller's transaction stays usable) and the refusal
becomes the service's own clear error, the one its check would have given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.db import IntegrityError, transaction


@contextmanager
def taken_meanwhile(error: Callable[[], Exception]) -> Iterator[None]:
    """Run the block in a savepoint; an IntegrityError raised in it is raised again as `error()`."""
    try:
        with transaction.atomic():
            yield
    except IntegrityError:
        raise error() from None

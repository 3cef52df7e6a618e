"""Orbax output that says nothing to the user, silenced where it is expected: the tracebacks
of the reads a failed restore abandons, and the warning about a step saved without a score.
Everything else orbax logs or raises goes through."""

from __future__ import annotations

import contextlib
import gc
import logging as std_logging
import sys
from collections.abc import Iterator

# What orbax logs when a manager that tracks scores (train.keep_best > 0) saves a step
# without one: a save on a stop signal, which is not scored so that the run stops at once.
UNSCORED_SAVE_WARNING = 'did not provide metrics'


def is_abandoned_read(error: BaseException | None, message: str = '') -> bool:
  """An error that the reads of a failed restore raise after orbax gave up on them."""
  text = f'{error} {message}'
  return 'Event loop is closed' in text or 'exception was never retrieved' in text


@contextlib.contextmanager
def quiet_abandoned_reads() -> Iterator[None]:
  """Keeps a failed restore from printing tens of tracebacks before its one-line warning.

  Orbax reads a step's arrays concurrently. When a read of a damaged step fails, orbax closes
  its event loop while the other reads are in flight; as they finish they fail against the
  closed loop (printed through sys.excepthook / sys.unraisablehook), and asyncio logs the
  errors nobody retrieved. Those errors only are dropped, while restoring.
  """
  logger = std_logging.getLogger('asyncio')
  keep = lambda record: not is_abandoned_read(None, record.getMessage())
  excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

  def quiet_excepthook(kind, error, traceback):
    if not is_abandoned_read(error):
      excepthook(kind, error, traceback)

  def quiet_unraisablehook(unraisable):
    if not is_abandoned_read(unraisable.exc_value):
      unraisablehook(unraisable)

  logger.addFilter(keep)
  sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook
  try:
    yield
  finally:
    gc.collect()  # abandoned tasks report when collected: while the filter is on
    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
    logger.removeFilter(keep)


@contextlib.contextmanager
def quiet_unscored_save() -> Iterator[None]:
  """Drops orbax's warning that a step is saved without metrics, around a save that has none
  on purpose (absl logs through the standard logger 'absl')."""
  logger = std_logging.getLogger('absl')
  keep = lambda record: UNSCORED_SAVE_WARNING not in record.getMessage()
  logger.addFilter(keep)
  try:
    yield
  finally:
    logger.removeFilter(keep)

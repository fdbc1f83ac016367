"""Orbax checkpointing of train state + data-iterator position + config in one step.

Each checkpoint step is a composite of three items: `state` (the sharded TrainState,
restored straight onto whatever mesh the target shardings describe, so a checkpoint
written on 8 devices restores onto 4), `data` (the grain iterator's position, one file
per process) and `config` (JSON, for the record). Saves are asynchronous; the last
`keep` steps are kept. If the newest step cannot be read, older steps are tried in
turn with a warning, so a save cut off by a preemption never loses the run.
"""

from __future__ import annotations

import logging
import signal
import time
import threading
from typing import Any

import grain
from etils import epath
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
  """Thin policy layer over `ocp.CheckpointManager` for the trainer."""

  def __init__(self, directory: str, *, save_every: int, keep: int = 3,
               async_save: bool = True):
    self.directory, self.save_every = directory, save_every
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.save_every > 0 and step % self.save_every == 0

  def save(self, step: int, state: Any, data_iterator: Any, config: dict) -> bool:
    """Starts an async save of step `step` (skips a step that is already saved)."""
    if step in self._manager.all_steps():
      return False
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(config)), force=True)

  def restore_latest(self, abstract_state: Any, data_iterator: Any) -> tuple[Any, int] | None:
    """Restores the newest readable step onto `abstract_state`'s shardings.

    `abstract_state` is a tree of `jax.ShapeDtypeStruct` with `.sharding` set; the data
    iterator is restored in place. Returns (state, step), or None if nothing is saved.
    """
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
      except Exception as err:  # any unreadable step: fall back to the one before it
        log.warning("checkpoint step %d is unreadable (%s: %s); moving it aside and "
                    "trying an older one", step, type(err).__name__, err)
        self._set_aside(step)
        continue
      return restored.state, step
    return None

  def _set_aside(self, step: int) -> None:
    """Renames an unreadable step to `<step>.unreadable` (kept for inspection) so that
    it neither shadows the steps the resumed run will write nor counts as the latest."""
    path = epath.Path(self.directory) / str(step)
    if jax.process_index() == 0 and path.exists():
      path.rename(path.parent / f"{step}.unreadable-{int(time.time())}")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"set_aside_checkpoint_{step}")
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class PreemptionFlag:
  """Set by SIGTERM (and SIGINT); the loop checkpoints and exits at the next step."""

  def __init__(self):
    self._event = threading.Event()
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    log.warning("received signal %d: will checkpoint and stop", signum)
    self._event.set()

  def is_set(self) -> bool:
    """True on any process if any process was signalled (all must stop together)."""
    flag = self._event.is_set()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      flag = bool(multihost_utils.process_allgather(flag).any())
    return flag

  def restore_handlers(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

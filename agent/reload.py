"""Reload on SIGHUP (``systemctl reload``): read the settings again and apply what can change in place.

The agent and the sidecar each hold a :class:`Reloader`. On SIGHUP it sends systemd ``RELOADING=1``,
builds the settings again from the sources of the start (the TOML file, the environment,
``$CREDENTIALS_DIRECTORY``), and then:

* refuses an invalid configuration in one line; the running settings stay as they are;
* sorts each changed setting (dotted, as in the TOML file: ``xmpp.jid``) into applied in place (the
  process's ``in_place`` names: the log, the alert rules, …), ignored (settings the process does not
  use) or ``needs restart: …``, logged in one line and left at its running value;
* sends ``READY=1`` with a ``STATUS=`` saying what happened.

Under systemd only the TOML file can change between start and reload: the environment
(``Environment=``, ``EnvironmentFile=``) and the ``LoadCredential=`` copies are fixed when the unit
starts. SIGHUPs that arrive during a reload make one more reload after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from loguru import logger
from pydantic import BaseModel

from agent.config import Settings
from agent.exceptions import ConfigError
from agent.logs import secrets_of, setup_logging
from agent.systemd.notify import Notifier

if TYPE_CHECKING:
    from agent.store import Store

log = logger.bind(component="reload")

#: ``apply(old, new, applied)``: put the running settings ``new`` in force; ``applied`` names what changed.
Apply = Callable[[Settings, Settings, frozenset[str]], Awaitable[None]]
#: ``check(new)``: raise ConfigError when ``new`` cannot be applied (beyond the settings' own validation).
Check = Callable[[Settings], None]

#: The agent: what it changes in place, and what it does not use. Everything else needs a new session.
AGENT_IN_PLACE = ("log", "alerts", "retention")
AGENT_IGNORED = ("export", "azure", "sidecar")


def changed(old: BaseModel, new: BaseModel, prefix: str = "") -> list[str]:
    """The dotted names of the settings whose values differ (a list or a table counts as one)."""
    names: list[str] = []
    for name in type(new).model_fields:
        a, b = getattr(old, name, None), getattr(new, name, None)
        if isinstance(a, BaseModel) and type(a) is type(b):
            names += changed(a, b, f"{prefix}{name}.")  # type: ignore[arg-type]  # b is of a's type
        elif a != b:
            names.append(f"{prefix}{name}")
    return names


def matches(name: str, prefixes: Iterable[str]) -> bool:
    """``name`` is one of ``prefixes`` or inside one (``alerts.rules`` is inside ``alerts``)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def keep(old: Settings, new: Settings, names: Iterable[str]) -> Settings:
    """``new`` with the settings ``names`` put back to their values in ``old``."""
    running = new.model_copy(deep=True)
    for name in names:
        *parents, leaf = name.split(".")
        source: Any = old
        target: Any = running
        for part in parents:
            source, target = getattr(source, part), getattr(target, part)
        setattr(target, leaf, copy.deepcopy(getattr(source, leaf)))
    return running


class Reloader:
    """Re-reads the settings on SIGHUP; ``appliers`` put the changed ones in force."""

    def __init__(
        self,
        settings: Settings,
        load: Callable[[], Settings],
        *,
        in_place: tuple[str, ...],
        ignored: tuple[str, ...],
        restart: tuple[str, ...] = (),
        notifier: Notifier | None = None,
    ) -> None:
        """``restart`` names settings inside an ``in_place`` section that still need a restart."""
        #: The settings in force: the last good file, with what needs a restart at its start value.
        self.settings = settings
        self.load = load
        self.in_place, self.ignored, self.restart = in_place, ignored, restart
        self.notifier = notifier
        self.appliers: list[Apply] = []
        self.checks: list[Check] = []
        self.wanted = asyncio.Event()
        #: Every secret seen since the start: a secret replaced on disk may still be in use.
        self._secrets = set(secrets_of(settings))
        self._listening = False

    def listen(self) -> None:
        """Reload on SIGHUP (from :meth:`serve` on); until :meth:`close`, SIGHUP no longer ends the process."""
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.wanted.set)
            self._listening = True

    def close(self) -> None:
        if self._listening:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._listening = False

    async def serve(self, stop: asyncio.Event) -> None:
        """Reload each time SIGHUP asks, until ``stop``."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                wanted = asyncio.ensure_future(self.wanted.wait())
                await asyncio.wait({stopping, wanted}, return_when=asyncio.FIRST_COMPLETED)
                wanted.cancel()
                if self.wanted.is_set() and not stop.is_set():
                    self.wanted.clear()
                    await self.reload()
        finally:
            stopping.cancel()

    async def reload(self) -> bool:
        """Read the settings again and apply them; False when they are refused."""
        notify = self.notifier is not None and self.notifier.ready_sent
        if notify:
            assert self.notifier is not None
            self.notifier.reloading()
        try:
            new = self.load()
            for check in self.checks:
                check(new)
        except ConfigError as exc:
            log.error("reload refused: {}; the running settings stay", exc)
            status, ok = f"reload refused, running settings kept: {exc}", False
        except Exception as exc:  # a reload must never end the process
            log.error("reload refused: {}: {}; the running settings stay", type(exc).__name__, exc)
            status, ok = f"reload refused, running settings kept: {exc}", False
        else:
            status, ok = await self._apply(new), True
        if notify:
            assert self.notifier is not None
            self.notifier.reloaded(status[:400])
        return ok

    async def _apply(self, new: Settings) -> str:
        old = self.settings
        names = changed(old, new)
        restart = [
            n for n in names
            if matches(n, self.restart) or not (matches(n, self.in_place) or matches(n, self.ignored))
        ]  # fmt: skip
        applied = [n for n in names if matches(n, self.in_place) and n not in restart]
        self.settings = running = keep(old, new, restart)
        fresh = set(secrets_of(new)) - self._secrets
        self._secrets |= fresh
        if fresh or any(matches(n, ("log",)) for n in applied):
            setup_logging(running.log, secrets=sorted(self._secrets))
        for apply in self.appliers:
            try:
                await apply(old, running, frozenset(applied))
            except Exception as exc:  # the others still apply; the process keeps running
                log.opt(exception=exc).error(
                    "reload: applying the new settings failed: {}: {}", type(exc).__name__, exc
                )
        if restart:
            log.warning("needs restart: {} (changed; the running values stay until a restart)", ", ".join(restart))
        log.info("settings reloaded: {}", f"applied {', '.join(applied)}" if applied else "nothing to apply")
        status = f"reloaded: {'applied ' + ', '.join(applied) if applied else 'nothing to apply'}"
        return status + (f"; needs restart: {', '.join(restart)}" if restart else "")


def agent_reloader(settings: Settings, load: Callable[[], Settings]) -> Reloader:
    """The agent's reloader, listening for SIGHUP; :func:`agent_applies` adds the store once open."""
    reloader = Reloader(settings, load, in_place=AGENT_IN_PLACE, ignored=AGENT_IGNORED)
    reloader.listen()
    return reloader


def agent_applies(reloader: Reloader, store: Store, notifier: Notifier) -> None:
    """The agent's changes in place: the store's alert rules, and retention where the settings have it."""
    reloader.notifier = notifier

    async def apply(old: Settings, new: Settings, applied: frozenset[str]) -> None:
        if any(matches(n, ("alerts",)) for n in applied):
            store.alerts.reconfigure(new.alerts)
        # Retention (XMPPMON_RETENTION__*) and its pruning (store.upkeep) come with another branch.
        retention, upkeep = getattr(new, "retention", None), getattr(store, "upkeep", None)
        sinks = [name for name, _ in new.sidecar.named_sinks()]
        if (
            retention is not None
            and upkeep is not None
            and (any(matches(n, ("retention",)) for n in applied) or sinks != [n for n, _ in old.sidecar.named_sinks()])
        ):
            upkeep.retain(retention, sinks=sinks)

    reloader.appliers.append(apply)

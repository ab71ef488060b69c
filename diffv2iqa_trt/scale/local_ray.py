"""The local Ray instance of a `score-dataset` run, set up for a shared host.

Ray's defaults suit a machine of one's own: a local `ray.init()` listens on every interface, keeps its session
folders (logs, sockets, spilled objects) world-writable under /tmp/ray, and writes its authentication token to
~/.ray/auth_token with the umask's mode (often readable by everyone). A local instance started for a run instead:

- listens on the loopback address only: Ray turns a node address of 127.0.0.1 into the host's outward address
  unless it runs as a single-machine instance (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, which Linux honours too), so
  both are set while the instance starts;
- keeps its session under a private folder (mode 0700, removed when the run ends; Ray makes its own folders inside
  world-writable, which the private parent makes harmless);
- runs with token authentication (Ray's default for a new local instance) with the token file readable by its
  owner only (Ray writes it with the umask's mode), without Ray's notice on every run that it turned it on.

Settings the user made (RAY_AUTH_MODE, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, RAY_TMPDIR) are honoured. (Setting
RAY_AUTH_MODE here would not do: the driver reads it when Ray is imported, and Ray refreshes that only when it turns
token authentication on itself.) Other users of
the host can still reach a loopback port: the token is what keeps them out, hence its private file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError

LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def default_token_path() -> Path:
    """Where Ray keeps its token when no RAY_AUTH_TOKEN(_PATH) names another (Ray's own default)."""
    return Path.home() / ".ray" / "auth_token"


def private_token_file(path: Path) -> None:
    """Make Ray's default token file readable by its owner only: create it (0600, in a 0700 folder) with a fresh
    256-bit token, as Ray would, when it is missing; take group and other access away when it is ours and has it."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        info = path.lstat()
    except FileNotFoundError:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:  # another run created it meanwhile
            return
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        return
    if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o077:
        os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a block (the processes Ray starts inherit them), then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _single_machine(ray: Any) -> Iterator[None]:
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is imported; where it was imported already, its
    constant is set for the start too (and restored)."""
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    saved = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    with _environment({SINGLE_MACHINE_ENV: "0"}):
        if saved is not None:
            constants.ENABLE_RAY_CLUSTER = False  # type: ignore[union-attr]
        try:
            yield
        finally:
            if saved is not None:
                constants.ENABLE_RAY_CLUSTER = saved  # type: ignore[union-attr]


def quiet_ray_data_console() -> None:
    """Ray Data logs every dataset's start and, without a terminal, its progress every few seconds at INFO on the
    console; the verb prints its own progress. Its console handlers keep warnings and errors (the log files under
    the session folder keep everything)."""
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(max(handler.level, logging.WARNING))


class _TokenNotice(logging.Filter):
    """Drops Ray's notice that it turned token authentication on (it is what the run wants, on every run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


def private_root() -> Path:
    """A new folder of mode 0700 for the session of one local instance (under RAY_TMPDIR where that is set)."""
    return Path(tempfile.mkdtemp(prefix="diffv2iqa-ray-", dir=os.environ.get("RAY_TMPDIR")))


def session_logs(root: Path) -> Path:
    return root / "ray" / "session_latest" / "logs"


def start_local_ray(ray: Any, num_cpus: int, root: Path) -> None:
    """Start a local Ray instance with its session under `root` (`private_root`): loopback only, private token.
    Ray's own errors propagate (the caller words them); what Ray started before failing is stopped."""
    notice = _TokenNotice()
    if not any(name in os.environ for name in AUTH_ENV):
        # Ray turns token authentication on for a new local instance and reads the token from its default file
        # (creating it where missing): make that file private first.
        token = default_token_path()
        try:
            private_token_file(token)
        except OSError as exc:
            raise ConfigError(f"cannot prepare Ray's token file {token} ({exc.strerror or exc}); make "
                              f"{token.parent} writable, or name a private token file with RAY_AUTH_TOKEN_PATH") \
                from None
    logging.getLogger(_TOKEN_LOGGER).addFilter(notice)
    try:
        with _single_machine(ray):
            ray.init(num_cpus=num_cpus, logging_level=logging.WARNING, include_dashboard=False,
                     _node_ip_address=LOOPBACK, _temp_dir=str(root / "ray"))
        address = ray.util.get_node_ip_address()
        if address != LOOPBACK:  # a Ray version that no longer honours the settings: do not run exposed
            raise ConfigError(f"the local Ray instance took the address {address}, not {LOOPBACK} (this Ray version "
                              "ignores the settings that keep it on the loopback address); start Ray yourself with "
                              "the network settings you want (`ray start --head --node-ip-address ...`) and pass "
                              "--address")
    except BaseException:
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise
    finally:
        logging.getLogger(_TOKEN_LOGGER).removeFilter(notice)


def stop_local_ray(ray: Any, root: Path) -> None:
    """Shut the instance down and remove its private folder (its logs with it)."""
    try:
        ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)

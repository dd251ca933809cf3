"""The command's allocator set-up (memvos.allocator): when it re-executes, and with what environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from memvos.allocator import ENV_DONE, GLIBC_TUNABLE, allocator_env, describe, find_tcmalloc

TC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def test_auto_prefers_tcmalloc_and_keeps_other_preloads() -> None:
    env = allocator_env({"PATH": "/bin", "LD_PRELOAD": "/lib/other.so"}, TC, platform="linux")
    assert env is not None
    assert env["LD_PRELOAD"] == f"{TC} /lib/other.so"
    assert env[ENV_DONE] == "1" and env["PATH"] == "/bin"
    assert "GLIBC_TUNABLES" not in env


def test_auto_without_tcmalloc_leaves_glibc_and_glibc_sets_the_tunable_unless_the_user_did() -> None:
    assert allocator_env({}, None, platform="linux") is None
    env = allocator_env({"MEMVOS_ALLOCATOR": "glibc"}, None, platform="linux")
    assert env is not None and env["GLIBC_TUNABLES"] == GLIBC_TUNABLE
    mine = {"MEMVOS_ALLOCATOR": "glibc", "GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}
    assert allocator_env(mine, None, platform="linux") is None
    env = allocator_env({"MEMVOS_ALLOCATOR": "glibc"}, TC, platform="linux")
    assert env is not None and "LD_PRELOAD" not in env and env["GLIBC_TUNABLES"] == GLIBC_TUNABLE


@pytest.mark.parametrize(
    "environ,platform",
    [
        ({"MEMVOS_ALLOCATOR": "system"}, "linux"),
        ({ENV_DONE: "1"}, "linux"),  # already re-executed: never loops
        ({"LD_PRELOAD": TC}, "linux"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "linux"),
        ({}, "darwin"),
    ],
)
def test_no_reexec(environ: dict[str, str], platform: str) -> None:
    assert allocator_env(environ, TC, platform=platform) is None


def test_bad_choice_and_missing_tcmalloc_are_errors() -> None:
    with pytest.raises(ValueError, match="MEMVOS_ALLOCATOR"):
        allocator_env({"MEMVOS_ALLOCATOR": "fast"}, TC, platform="linux")
    with pytest.raises(ValueError, match="libtcmalloc"):
        allocator_env({"MEMVOS_ALLOCATOR": "tcmalloc"}, None, platform="linux")


def test_find_and_describe(tmp_path) -> None:
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    assert find_tcmalloc([str(lib)]) is None
    lib.write_bytes(b"")
    assert find_tcmalloc([str(tmp_path / "nope.so"), str(lib)]) == str(lib)
    assert describe({"LD_PRELOAD": TC}).startswith("tcmalloc")
    assert describe({"GLIBC_TUNABLES": GLIBC_TUNABLE}) == f"glibc malloc ({GLIBC_TUNABLE})"
    assert describe({}) == "glibc malloc (defaults)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="re-execution is Linux-only")
def test_the_command_reexecutes_once_with_the_allocator() -> None:
    """``python -m memvos`` really re-executes: the child logs the allocator it runs with."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", ENV_DONE)}
    env["MEMVOS_ALLOCATOR"] = "glibc"  # works whether or not tcmalloc is installed
    out = subprocess.run([sys.executable, "-m", "memvos", "-v"], env=env, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr  # no command: usage, after the debug line
    assert f"allocator: glibc malloc ({GLIBC_TUNABLE})" in out.stderr

"""The persistent XLA compilation cache for API users (the CLI turns it on by itself)."""

import os

#: where compiled executables are kept unless FLOWLAB_COMPILATION_CACHE or `path` says otherwise
DEFAULT_CACHE = os.path.join("~", ".cache", "flowlab", "xla")


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Keep every compiled executable on disk, so that a second process (a rerun of a script,
    the next cell of a notebook session after a restart) loads a solve instead of compiling
    it again: the first call of `simulate` or `euler_steps` costs seconds of XLA compilation
    (docs: Getting started, "What a first call costs"), a cached one a fraction of that.

    Call it before the first solve. Every executable is stored, not only those that took
    over a second: a study compiles many small functions per shape. JAX stores no executable
    with host callbacks, and a `simulate` solve has two (equinox's checks of the save times):
    set EQX_ON_ERROR=nan in the environment to have it stored, as the CLI does for its own
    process (docs, How-to → GPU and multi-device). `euler_steps` solves are stored as they are.

    **Arguments:**

    - `path`: the cache folder; None: $FLOWLAB_COMPILATION_CACHE, else ~/.cache/flowlab/xla.
      '0', 'off', 'none' or '' turn the cache off.

    **Returns:**

    The folder in use, or None when the cache is off or cannot be made (a folder that cannot
    be created, a JAX without the setting): no exception.
    """
    import jax

    path = path if path is not None else os.environ.get("FLOWLAB_COMPILATION_CACHE",
                                                        DEFAULT_CACHE)
    if not path or path.lower() in ("0", "off", "none"):
        return None
    path = os.path.expanduser(path)
    try:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    except (OSError, AttributeError):
        return None
    return path

"""Triton kernels. Each has a plain-torch reference beside the code that uses it, and is tested against it.

Under TRITON_INTERPRET=1 (the CPU test runs) Triton 3.6's interpreter turns every scalar into a one-element array
and calls int() on it where a loop bound is needed, which NumPy >= 2.4 refuses; `_fix_interpreter_scalars` makes
that int() read the single element instead, so kernels with runtime loop bounds run in the interpreter too.
"""

import os


def _fix_interpreter_scalars() -> None:
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_spqrkit_fixed", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._spqrkit_fixed = True
    interpreter._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET") == "1":
    _fix_interpreter_scalars()

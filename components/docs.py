"""Component parameter docs from the configs: each field is documented once, in kd.config.

KFP reads a component's parameter descriptions (what the KFP and Vertex AI UIs show) from the
``Args:`` section of the function's docstring when ``@dsl.component`` decorates it. The
components take fields of the stage configs, so :func:`config_args`, applied under
``@dsl.component``, writes their ``Args:`` section from the configs' field docs
(:func:`kd.config.field_docs`) plus the component's own artifact arguments. KFP drops the
decorator lines when it serialises the function's source into the container command, so the
component runs as before. Imports only kd.config (no TensorFlow).
"""

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kd.config import field_docs

F = TypeVar("F", bound=Callable[..., Any])


def config_args(
    *configs: type, rename: Mapping[str, str] | None = None, **artifacts: str
) -> Callable[[F], F]:
    """Append an ``Args:`` section to the decorated function's docstring: each parameter's
    doc is the one given in ``artifacts`` (artifact arguments), else the doc of the field of
    ``configs`` it is: the field of its name, or ``rename[name]`` for a parameter named
    otherwise (``rename={"split_seed": "seed"}``).

    Raises:
        TypeError: a parameter with no doc, a field documented differently by two of
            ``configs``, a doc or rename for no parameter, or a docstring that already has an
            ``Args:`` section.
    """
    renames = dict(rename or {})
    config_docs = [field_docs(c) for c in configs]
    names_of = ", ".join(c.__name__ for c in configs)

    def field_doc(name: str) -> str | None:
        found = {docs[name] for docs in config_docs if name in docs}
        if len(found) > 1:
            raise TypeError(f"field {name!r} is documented differently by {names_of}")
        return found.pop() if found else None

    def decorate(fn: F) -> F:
        names = list(inspect.signature(fn).parameters)
        stray = sorted((set(artifacts) | set(renames)) - set(names))
        docs = {n: artifacts[n] if n in artifacts else field_doc(renames.get(n, n)) for n in names}
        missing = [n for n, d in docs.items() if d is None]
        doc = inspect.cleandoc(fn.__doc__ or "")
        if stray or missing or "Args:" in doc.splitlines():
            raise TypeError(
                f"{fn.__name__}: no doc for {missing}, docs or renames for no parameter "
                f"{stray}, or an Args: section already written. Fix: document each field in "
                f"the docstring of {names_of}, rename a parameter named otherwise to its "
                f"field, and pass the other arguments' docs"
            )
        lines = [f"    {n}: {d}" for n, d in docs.items()]
        fn.__doc__ = doc + "\n\nArgs:\n" + "\n".join(lines) + "\n"
        return fn

    return decorate

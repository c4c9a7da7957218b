"""Sphinx extension: the API reference's completeness, and re-exports that link to one page.

Public means listed in a module's ``__all__``. Every public module of ``metagan_jax`` (found by
walking the package: names without a leading underscore, ``__main__`` excluded) must have an
``__all__``, and every name in it must have an object description in the built docs, in Sphinx's
Python domain (``env.get_domain("py").objects``: what ``autofunction``, ``autoclass``,
``autodata`` and ``automodule`` register). At the end of the build, each one that has not is a
WARNING, so ``sphinx-build -W`` fails.

A name is checked under its *canonical* name: ``metagan_jax.adapt`` is
``metagan_jax.inner.adapt``, documented once, on that module's page. A class or function is
canonically ``obj.__module__ + "." + obj.__qualname__``; a constant that a package re-exports is
found by identity in the ``__all__`` of the plain module that defines it; a module listed in a
package's ``__all__`` (``metagan_jax.losses``) is covered by its own module page.

Beside the check, the extension

- registers each re-export (``metagan_jax.adapt``) as an alias of its canonical entry, so
  ``{func}`metagan_jax.adapt``` resolves to the canonical page and no page is duplicated;
- provides the ``api-reexports`` directive: a package's page lists its submodules and its
  re-exported names as summary tables that link to the canonical pages;
- feeds the autosummary templates (``docs/_templates/autosummary``): ``exclude_members`` (the
  attributes a class's docstring describes in its ``Attributes:`` section, which autodoc must not
  describe a second time, and flax's own fields of a linen module) and a file name for each page whose name differs from another's only by
  case (``layers.Conv3x3`` and ``layers.conv3x3``), which would collide on macOS and Windows.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import importlib
import inspect
import os
import pkgutil
import re
import sys
import types
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.domains.python import ObjectEntry
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.typing import stringify_annotation

logger = logging.getLogger(__name__)

ROOT_PACKAGE = "metagan_jax"


@dataclasses.dataclass(frozen=True)
class PublicName:
  """One entry of a public module's ``__all__``."""

  module: str  # the module whose __all__ lists it
  name: str
  canonical: str | None  # the documented full name; None where it cannot be found
  kind: str  # "module", "function", "class", "exception", "data"
  reexport: bool  # listed here, documented (canonically) elsewhere

  @property
  def fullname(self) -> str:
    return f"{self.module}.{self.name}"


def public_modules(root: str = ROOT_PACKAGE) -> list[types.ModuleType]:
  """The package and every submodule whose dotted name has no part with a leading underscore."""
  package = importlib.import_module(root)
  modules = [package]
  for info in pkgutil.walk_packages(package.__path__, root + "."):
    if any(part.startswith("_") for part in info.name.split(".")):
      continue  # private modules, and __main__ (importing it would run the command)
    modules.append(importlib.import_module(info.name))
  return sorted(modules, key=lambda m: m.__name__)


def _kind(obj: Any) -> str:
  if inspect.ismodule(obj):
    return "module"
  if inspect.isclass(obj):
    return "exception" if issubclass(obj, BaseException) else "class"
  if callable(obj) and hasattr(obj, "__qualname__"):
    return "function"
  return "data"


def public_names(modules: list[types.ModuleType] | None = None) -> list[PublicName]:
  """Every name of every public module's ``__all__``, with its canonical documented name."""
  modules = public_modules() if modules is None else modules
  by_name = {m.__name__: m for m in modules}
  # Constants have no __module__: a package's re-export is found by identity in the __all__ of
  # a plain (non-package) public module, the same name first.
  defined: dict[int, list[str]] = {}
  for m in modules:
    if hasattr(m, "__path__"):
      continue
    for name in getattr(m, "__all__", ()):
      if hasattr(m, name):
        defined.setdefault(id(getattr(m, name)), []).append(f"{m.__name__}.{name}")
  out = []
  for m in modules:
    for name in getattr(m, "__all__", ()):
      obj = getattr(m, name, None)
      kind = _kind(obj)
      own = f"{m.__name__}.{name}"
      if kind == "module":
        canonical = obj.__name__
      elif kind in ("class", "exception", "function") and getattr(obj, "__module__", None):
        canonical = f"{obj.__module__}.{obj.__qualname__}"
        if obj.__module__ not in by_name and not hasattr(m, "__path__"):
          canonical = own  # defined elsewhere (a private module): documented here
      elif not hasattr(m, "__path__"):
        canonical = own
      else:
        candidates = defined.get(id(obj), [])
        same = [c for c in candidates if c.rsplit(".", 1)[-1] == name]
        canonical = (same or candidates or [None])[0]
      out.append(PublicName(m.__name__, name, canonical, kind, canonical != own))
  return out


@functools.lru_cache(maxsize=1)
def _public_names_once() -> tuple[PublicName, ...]:
  return tuple(public_names())


# -- the check --------------------------------------------------------------------------------


def check_coverage(app: Sphinx, exception: Exception | None) -> None:
  """Warns for each public module without ``__all__`` and each public name without a page."""
  if exception is not None:
    return
  objects = app.env.get_domain("py").objects
  modules = public_modules()
  for m in modules:
    if not hasattr(m, "__all__"):
      logger.warning(
        "api-coverage: public module %s has no __all__: list its public names in one",
        m.__name__,
        type="api_coverage",
        subtype="no_all",
      )
    for name in getattr(m, "__all__", ()):
      if not hasattr(m, name):
        logger.warning(
          "api-coverage: %s.__all__ lists %r, which the module does not define",
          m.__name__,
          name,
          type="api_coverage",
          subtype="undefined",
        )
  checked = 0
  for p in public_names(modules):
    if not hasattr(importlib.import_module(p.module), p.name):
      continue  # warned above
    checked += 1
    entry = objects.get(p.canonical) if p.canonical else None
    if entry is None or entry.aliased:
      where = f" (documented as {p.canonical})" if p.reexport and p.canonical else ""
      logger.warning(
        "api-coverage: public name %s%s has no page in the API reference: add its module to "
        "docs/api/index.md, or take the name out of %s.__all__",
        p.fullname,
        where,
        p.module,
        type="api_coverage",
        subtype="missing",
      )
  logger.info("api-coverage: %d public names in %d modules checked", checked, len(modules))


# -- re-exports: aliases and the package tables -----------------------------------------------


def register_aliases(app: Sphinx, env: Any) -> list[str]:
  """Makes each re-export's full name resolve to its canonical object description."""
  domain = env.get_domain("py")
  objects = domain.objects
  for p in public_names():
    if not p.reexport or p.canonical is None or p.kind == "module":
      continue
    target = objects.get(p.canonical)
    if target is None or target.aliased:
      continue  # the check reports it
    current = objects.get(p.fullname)
    if current is not None and not current.aliased:
      continue  # documented under that name too (the check does not ask for it)
    objects[p.fullname] = ObjectEntry(target.docname, target.node_id, target.objtype, True)
  return []


class ApiReexports(SphinxDirective):
  """``.. api-reexports:: PACKAGE``: the package's submodules and re-exports, as link tables."""

  required_arguments = 1
  has_content = False

  def run(self) -> list[nodes.Node]:
    package = importlib.import_module(self.arguments[0])
    modules = public_modules(ROOT_PACKAGE)
    self.env.note_dependency(os.path.abspath(package.__file__))
    children = [
      m.__name__
      for m in modules
      if m.__name__.rsplit(".", 1)[0] == package.__name__ and m is not package
    ]
    names = [p for p in public_names(modules) if p.module == package.__name__]
    groups = [
      ("Modules", children),
      ("Classes", [p.canonical for p in names if p.kind == "class"]),
      ("Functions", [p.canonical for p in names if p.kind == "function"]),
      ("Exceptions", [p.canonical for p in names if p.kind == "exception"]),
      ("Constants", [p.canonical for p in names if p.kind == "data"]),
    ]
    lines = []
    for title, items in groups:
      items = [i for i in items if i]
      if not items:
        continue
      lines += [f".. rubric:: {title}", "", ".. autosummary::", ""]
      lines += [f"   ~{item}" for item in items] + [""]
    # The items are full names; autosummary refuses those inside the current module's page.
    module = self.env.ref_context.pop("py:module", None)
    try:
      return self.parse_text_to_nodes("\n".join(lines))
    finally:
      if module is not None:
        self.env.ref_context["py:module"] = module


# -- references ------------------------------------------------------------------------------

_CONSTANTS = {"None", "True", "False", "Ellipsis", "NotImplemented"}


def _lookup(path: str) -> tuple[bool, Any, str | None]:
  """Imports ``a.b.C.d`` as far as it goes: ``(found, object, canonical name or None)``.

  Modules are imported only inside the package, or when already imported.
  """
  parts = path.split(".")
  for i in range(len(parts), 0, -1):
    head = ".".join(parts[:i])
    if head in sys.modules:
      obj = sys.modules[head]
    elif head == ROOT_PACKAGE or head.startswith(ROOT_PACKAGE + "."):
      try:
        obj = importlib.import_module(head)
      except ImportError:
        continue
    else:
      continue
    canonical = obj.__name__
    for name in parts[i:]:
      if not hasattr(obj, name):
        return False, None, None
      parent, obj = obj, getattr(obj, name)
      canonical = _canonical(obj, parent, canonical, name)
    return True, obj, canonical
  return False, None, None


def _canonical(obj: Any, parent: Any, parent_name: str, name: str) -> str:
  if inspect.ismodule(obj):
    return obj.__name__
  if (inspect.isclass(obj) or inspect.isroutine(obj)) and getattr(obj, "__module__", None):
    qualname = getattr(obj, "__qualname__", name)
    if "<" not in qualname:  # not a lambda or a local function
      return f"{obj.__module__}.{qualname}"
  if inspect.ismodule(parent):  # a constant: the module that defines it
    for p in _public_names_once():
      if p.fullname == f"{parent_name}.{name}" and p.canonical:
        return p.canonical
  return f"{parent_name}.{name}"


def resolve_reference(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
  """Resolves a reference to a name the package imports or re-exports, or warns.

  A docstring of ``metagan_jax.meta`` may write :class:`AdaptConfig` (imported from
  ``metagan_jax.inner``): the reference goes to the canonical page. A reference into the package
  that leads nowhere (a misspelt or undocumented name; a napoleon "type" that is prose) is a
  warning; references to other libraries stay plain text, as without intersphinx.
  """
  if node.get("refdomain") != "py":
    return None
  target = node["reftarget"]
  if target in _CONSTANTS or hasattr(builtins, target):
    return None
  modname, clsname = node.get("py:module"), node.get("py:class")
  candidates = [target]
  if modname:
    candidates[:0] = ([f"{modname}.{clsname}.{target}"] if clsname else []) + [
      f"{modname}.{target}"
    ]
  for path in candidates:
    found, _, canonical = _lookup(path)
    if found:
      break
  inside = target.startswith(ROOT_PACKAGE + ".") or bool(
    modname and modname.startswith(ROOT_PACKAGE)
  )
  if not found:
    if inside:
      logger.warning(
        "api-coverage: unknown reference %r (in %s)",
        target,
        modname or node.get("refdoc"),
        location=node,
        type="api_coverage",
        subtype="ref",
      )
    return None
  if canonical is None or not canonical.startswith(ROOT_PACKAGE + "."):
    return None  # another library's object
  domain = env.get_domain("py")
  if canonical in domain.objects:
    return domain.resolve_xref(
      env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode
    )
  if inside:
    logger.warning(
      "api-coverage: reference %r is to %s, which has no page in the API reference",
      target,
      canonical,
      location=node,
      type="api_coverage",
      subtype="ref",
    )
  return None


def public_bases(app, name, obj, options, bases) -> None:
  """Shows a private base class (``layers._Layer``) as the public classes it derives from."""
  out = []
  for base in bases:
    while getattr(base, "__name__", "").startswith("_") and len(base.__bases__) == 1:
      base = base.__bases__[0]
    if base not in out:
      out.append(base)
  bases[:] = out


def _is_linen(obj: Any) -> bool:
  linen = sys.modules.get("flax.linen")
  return inspect.isclass(obj) and linen is not None and issubclass(obj, linen.Module)


def _default_text(value: Any, module: Any) -> str:
  for name, v in vars(module).items():  # a module-level name: `default_kernel_init`
    if v is value and not name.startswith("_") and not inspect.ismodule(v):
      return name
  if inspect.isclass(value):  # `jnp.float32`
    return f"{value.__module__}.{value.__qualname__}"
  text = repr(value)
  return "..." if "<" in text else text


def linen_signature(app, what, name, obj, options, signature, return_annotation):
  """A flax linen module's signature: its fields as written, without flax's parent and name.

  autodoc reads the generated ``__init__``: flax's ``parent``/``name`` fields and defaults
  printed as ``<function ...>``, which is not Python, so the signature would not even parse.
  """
  if what != "class" or not _is_linen(obj) or not dataclasses.is_dataclass(obj):
    return None
  module = sys.modules.get(obj.__module__)
  params = []
  for f in dataclasses.fields(obj):
    if not f.init or f.name in ("parent", "name"):
      continue
    text = f.name
    if f.type:
      text += f": {f.type if isinstance(f.type, str) else stringify_annotation(f.type)}"
    if f.default is not dataclasses.MISSING:
      text += " = " + _default_text(f.default, module)
    elif f.default_factory is not dataclasses.MISSING:
      text += " = ..."
    params.append(text)
  return f"({', '.join(params)})", return_annotation


# -- what the autosummary templates need ------------------------------------------------------

_SECTION = re.compile(r"^(\s*)(Attributes|Attrs):\s*$")
_ITEM = re.compile(r"^(\w+)\s*(\(.*\))?\s*:")
_FIELD_ALIAS = re.compile(r"^Alias for field number \d+$")


def attribute_section(doc: str | None) -> list[str]:
  """The names a Google-style docstring's ``Attributes:`` section describes."""
  lines = inspect.cleandoc(doc or "").splitlines()
  names = []
  for i, line in enumerate(lines):
    match = _SECTION.match(line)
    if not match:
      continue
    indent = None
    for item in lines[i + 1 :]:
      if not item.strip():
        continue
      depth = len(item) - len(item.lstrip())
      if depth <= len(match.group(1)):
        break
      indent = depth if indent is None else indent
      found = _ITEM.match(item.strip())
      if depth == indent and found:
        names.append(found.group(1))
  return names


def template_context(app: Sphinx, config: Any) -> None:
  """Adds ``exclude_members`` to the templates' context and maps colliding page names."""
  exclude_members = {}
  plain_classes = []  # bases (object,): "Bases: object" says nothing
  pages = []
  for p in public_names():
    module = importlib.import_module(p.module)
    if p.reexport or p.canonical is None or not hasattr(module, p.name):
      continue  # the check at the end of the build reports names that are not defined
    pages.append((p.canonical, p.kind))
    obj = getattr(module, p.name)
    if inspect.isclass(obj):
      # Described by the docstring's Attributes section; a linen module's flax fields.
      flax_fields = ["name", "parent", "scope"] if _is_linen(obj) else []
      exclude_members[p.canonical] = attribute_section(obj.__doc__) + flax_fields
      if obj.__bases__ == (object,):
        plain_classes.append(p.canonical)
  config.autosummary_context = {
    **config.autosummary_context,
    "exclude_members": exclude_members,
    "plain_classes": plain_classes,
  }
  lower: dict[str, list[tuple[str, str]]] = {}
  for page, kind in pages:
    lower.setdefault(page.lower(), []).append((page, kind))
  filename_map = dict(config.autosummary_filename_map)
  for same in lower.values():
    # The first keeps its name (capitals sort first: the class); the others get their kind.
    for i, (page, kind) in enumerate(sorted(same)[1:]):
      filename_map.setdefault(page, f"{page}-{kind}" + (f"-{i}" if i else ""))
  config.autosummary_filename_map = filename_map


def drop_generic_docstrings(app, what, name, obj, options, lines) -> None:
  """Blanks docstrings that describe a type, not the object.

  A NamedTuple field's generated one ("Alias for field number 0"), and the docstring of a
  constant's type (``str``'s, for a string constant without a ``#:`` comment).
  """
  if not lines:
    return
  if len(lines) <= 2 and _FIELD_ALIAS.match(lines[0].strip()):
    lines[:] = []
  elif what in ("data", "attribute") and not inspect.isclass(obj) and not callable(obj):
    type_doc = inspect.cleandoc(type(obj).__doc__ or "").splitlines()
    if type_doc and getattr(obj, "__doc__", None) == type(obj).__doc__:
      if lines[0].strip() == type_doc[0].strip():
        lines[:] = []


def setup(app: Sphinx) -> dict[str, Any]:
  app.setup_extension("sphinx.ext.autosummary")
  app.connect("config-inited", template_context)
  app.connect("env-updated", register_aliases)
  app.connect("autodoc-process-docstring", drop_generic_docstrings)
  app.connect("missing-reference", resolve_reference)
  app.connect("autodoc-process-bases", public_bases)
  app.connect("autodoc-process-signature", linen_signature)
  app.connect("build-finished", check_coverage)
  app.add_directive("api-reexports", ApiReexports)
  return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}

"""Pins the package's shape: imports run one way between its folders, no module reaches a
private name of another, nothing outside models/ asks a model for its class, and no module
grows past the size where it should be split. A static scan of the source (`ast`); each
check is also run on planted modules that break it, so it can fail."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'perceiver_ar_vl'
MODULES = sorted(PACKAGE.rglob('*.py'))
MODEL_CLASSES = {'PerceiverAR', 'Transformer', 'ECP'}
# Folders by layer, lowest first: a module may import its own folder and any lower one.
LAYERS = [
  '',
  'layers',
  'models',
  'data',
  'runs',
  'sampling',
  'evaluation',
  'training',
  'experiments',
  'original',
]
MAX_LINES = 330


def module_name(path: pathlib.Path) -> str:
  """'perceiver_ar_vl.models.base' for perceiver_ar_vl/models/base.py (a package: its name)."""
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def is_package(name: str) -> bool:
  return (PACKAGE.parent / name.replace('.', '/')).is_dir()


def is_module(name: str) -> bool:
  base = PACKAGE.parent / name.replace('.', '/')
  return base.with_suffix('.py').exists() or base.is_dir()


def folder(name: str) -> str:
  """The layer folder of a module name ('' for the top-level modules and the package)."""
  parts = name.split('.')
  return parts[1] if len(parts) > 2 or (len(parts) == 2 and is_package(name)) else ''


def absolute(node: ast.ImportFrom, here: str) -> str:
  """The module an ImportFrom reads, with relative imports (`from .x import y`) resolved
  against the module `here` (whose own package, for an __init__, is `here`)."""
  if not node.level:
    return node.module or ''
  package = here if is_package(here) else here.rpartition('.')[0]
  for _ in range(node.level - 1):
    package = package.rpartition('.')[0]
  return f'{package}.{node.module}' if node.module else package


def package_imports(tree: ast.Module, here: str):
  """(module, imported name or None, bound alias) for every import of perceiver_ar_vl."""
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      module = absolute(node, here)
      if module.split('.')[0] == 'perceiver_ar_vl':
        for alias in node.names:
          yield module, alias.name, alias.asname or alias.name
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split('.')[0] == 'perceiver_ar_vl':
          # `import a.b.c` binds `a`; `import a.b.c as x` binds x to a.b.c.
          yield alias.name, None, alias.asname or alias.name.split('.')[0]


def private_name_uses(source: str, here: str) -> list[str]:
  """Where the module `here` imports a private name of the package, or reads one
  (`module._x`, `package.module._x`) from a package module or name it imported."""
  tree = ast.parse(source)
  problems, imported = [], set()
  for module, name, bound in package_imports(tree, here):
    imported.add(bound)
    for part in [*module.split('.'), *([name] if name else [])]:
      if part.startswith('_') and not part.startswith('__'):
        problems.append(f'{here} imports {part} ({module}{"." + name if name else ""})')
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute):
      root = node.value
      while isinstance(root, ast.Attribute):
        root = root.value
      private = node.attr.startswith('_') and not node.attr.startswith('__')
      if private and isinstance(root, ast.Name) and root.id in imported:
        problems.append(f'{here} uses {ast.unparse(node)}, a private name of another module')
  return problems


def model_class_dispatch(source: str) -> list[str]:
  """isinstance / issubclass on a model class, or `type(x) is / == ModelClass`."""
  problems = []
  named = lambda tree: {
    n.attr if isinstance(n, ast.Attribute) else getattr(n, 'id', '') for n in ast.walk(tree)
  }
  for node in ast.walk(ast.parse(source)):
    if (
      isinstance(node, ast.Call)
      and getattr(node.func, 'id', '') in ('isinstance', 'issubclass')
      and len(node.args) == 2
      and named(node.args[1]) & MODEL_CLASSES
    ):
      problems.append(ast.unparse(node))
    if isinstance(node, ast.Compare) and any(
      isinstance(op, (ast.Is, ast.IsNot, ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops
    ):
      sides = [node.left, *node.comparators]
      calls_type = any(
        isinstance(s, ast.Call) and getattr(s.func, 'id', '') == 'type' for s in sides
      )
      if calls_type and any(named(s) & MODEL_CLASSES for s in sides):
        problems.append(ast.unparse(node))
  return problems


def upward_imports(source: str, here: str) -> list[str]:
  """Imports of a higher layer than the module's own folder (top-level modules are plumbing:
  they may import anything and are checked for cycles instead)."""
  own = LAYERS.index(folder(here))
  problems = []
  for module, name, _ in package_imports(ast.parse(source), here):
    target = f'{module}.{name}' if name and is_module(f'{module}.{name}') else module
    other = folder(target)
    if own and other and LAYERS.index(other) > own:
      problems.append(f'{here} imports {target}: upward')
  return problems


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
  """module -> the package modules it imports (a module's own packages excluded)."""
  graph = {}
  for here, source in sources.items():
    deps = set()
    for module, name, _ in package_imports(ast.parse(source), here):
      deps.add(f'{module}.{name}' if name and is_module(f'{module}.{name}') else module)
    graph[here] = {d for d in deps if d != here and not here.startswith(d + '.')}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state = {}

  def visit(node, stack):
    state[node] = 'open'
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == 'open':
        return [*stack, node, dep]
      if dep not in state:
        cycle = visit(dep, [*stack, node])
        if cycle:
          return cycle
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node, [])
      if cycle:
        return cycle
  return None


# ---------------------------------------------------------------- the package itself

IDS = lambda p: str(p.relative_to(PACKAGE))


def test_the_scan_sees_every_module():
  names = {module_name(p) for p in MODULES}
  for name in ('perceiver_ar_vl.models.base', 'perceiver_ar_vl.sampling.decode'):
    assert name in names
  assert all(is_module(n) for n in names)


@pytest.mark.parametrize('path', MODULES, ids=IDS)
def test_no_private_name_crosses_modules(path):
  assert private_name_uses(path.read_text(), module_name(path)) == []


@pytest.mark.parametrize('path', MODULES, ids=IDS)
def test_no_isinstance_on_model_classes_outside_models(path):
  if path.parent.name == 'models':
    return
  assert model_class_dispatch(path.read_text()) == [], f'{path.name} dispatches on a model class'


@pytest.mark.parametrize('path', MODULES, ids=IDS)
def test_imports_go_down_the_layers(path):
  """A module imports only its own folder or a lower one (top-level modules are the lowest,
  except those that build or restore a model and those that run a model's evaluation)."""
  assert upward_imports(path.read_text(), module_name(path)) == []


def test_package_imports_have_no_cycle():
  graph = import_graph({module_name(p): p.read_text() for p in MODULES})
  assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


@pytest.mark.parametrize('path', MODULES, ids=IDS)
def test_modules_stay_small(path):
  assert len(path.read_text().splitlines()) <= MAX_LINES, f'{path.name}: split it by concern'


# ---------------------------------------------------------------- planted modules

SAMPLING = 'perceiver_ar_vl.sampling.decode'


@pytest.mark.parametrize(
  'source',
  [
    'from perceiver_ar_vl.models.base import _check\n',
    'from perceiver_ar_vl.sampling.decode import reset_latents, _decode_loop as loop\n',
    'from perceiver_ar_vl.models import _private_module\n',
    'from ._filters import draw\n',  # relative: perceiver_ar_vl.sampling._filters
    'from .filters import _helper\n',
    'from ..models.base import _check\n',
    'from perceiver_ar_vl import models\nx = models._registry\n',
    'from perceiver_ar_vl import models\nx = models.base._check\n',
    'import perceiver_ar_vl.models.base\nx = perceiver_ar_vl.models.base._check\n',
    'import perceiver_ar_vl.models.base as base\nbase._check(1)\n',
    'from perceiver_ar_vl.models.base import LanguageModel\nLanguageModel._check_fields\n',
  ],
)
def test_the_private_name_scan_catches_planted_uses(source):
  assert private_name_uses(source, SAMPLING), source


def test_the_private_name_scan_allows_public_and_own_names():
  source = (
    'import jax\nfrom perceiver_ar_vl import models\nfrom perceiver_ar_vl.models import base\n'
    'def _own(): return 1\n_own()\nself_ = object()\nx = jax._src\ny = models.__name__\n'
    'z = base.LanguageModel.forward\nclass A:\n  def f(self): return self._x\n'
  )
  assert private_name_uses(source, SAMPLING) == []


@pytest.mark.parametrize(
  'source',
  [
    'from perceiver_ar_vl import models\nisinstance(m, models.PerceiverAR)\n',
    'from perceiver_ar_vl.models import ECP\nif isinstance(m, (int, ECP)): pass\n',
    'issubclass(type(m), models.ecp.ECP)\n',
    'type(m) is Transformer\n',
    'x = models.PerceiverAR == type(m)\n',
  ],
)
def test_the_dispatch_scan_catches_planted_checks(source):
  assert model_class_dispatch(source), source


def test_the_dispatch_scan_allows_the_interface():
  source = (
    'isinstance(m, LanguageModel)\nisinstance(x, (int, float))\ntype(m).__name__\n'
    'm.scores_every_position\ntype(x) is int\n'
  )
  assert model_class_dispatch(source) == []


def test_the_layer_scan_catches_planted_upward_imports():
  assert upward_imports('from perceiver_ar_vl.models import base\n', 'perceiver_ar_vl.layers.x')
  assert upward_imports('from perceiver_ar_vl import training\n', 'perceiver_ar_vl.sampling.x')
  assert upward_imports('import perceiver_ar_vl.experiments.flops\n', 'perceiver_ar_vl.models.x')
  assert upward_imports('from ..training import step\n', 'perceiver_ar_vl.models.x')  # relative
  assert (
    upward_imports('from perceiver_ar_vl.layers import masks\n', 'perceiver_ar_vl.models.x') == []
  )
  assert upward_imports('from perceiver_ar_vl import training\n', 'perceiver_ar_vl.evaluate') == []


def test_the_cycle_scan_catches_a_planted_cycle():
  sources = {
    'perceiver_ar_vl.losses': 'from perceiver_ar_vl import latents\n',
    'perceiver_ar_vl.latents': 'from perceiver_ar_vl.parallel import make_mesh\n',
    'perceiver_ar_vl.parallel': 'from perceiver_ar_vl import losses\n',
  }
  cycle = find_cycle(import_graph(sources))
  assert cycle and cycle[0] == cycle[-1], cycle
  del sources['perceiver_ar_vl.parallel']
  assert find_cycle(import_graph(sources)) is None


# ---------------------------------------------------------------- what setup.py declares

ROOT = PACKAGE.parent


def declared_requirements() -> tuple[list[str], dict[str, list[str]]]:
  """(install_requires, extras_require) as written in setup.py (read, not run)."""
  call = next(
    node
    for node in ast.walk(ast.parse((ROOT / 'setup.py').read_text()))
    if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'setup'
  )
  found = {
    k.arg: ast.literal_eval(k.value)
    for k in call.keywords
    if k.arg in ('install_requires', 'extras_require')
  }
  return found['install_requires'], found['extras_require']


def requirement_name(requirement: str) -> str:
  """'etils' for 'etils[epath]>=1.15.0', normalised as pip compares names."""
  name = requirement.split(';')[0]
  for mark in '[<>=!~ ':
    name = name.split(mark)[0]
  return name.lower().replace('_', '-')


def imported_top_level(paths) -> set[str]:
  names = set()
  for path in paths:
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names |= {alias.name.split('.')[0] for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names.add(node.module.split('.')[0])
  return names


def test_every_imported_package_is_declared():
  """Each third-party package that the library or launch.py imports is a requirement of
  setup.py (an extra for the optional ones); a planted undeclared import is caught."""
  import importlib.metadata
  import sys

  distributions = importlib.metadata.packages_distributions()
  required, extras = declared_requirements()
  declared = {requirement_name(r) for r in required + sum(extras.values(), [])}

  def undeclared(modules: set[str]) -> set[str]:
    third_party = modules - set(sys.stdlib_module_names) - {'perceiver_ar_vl'}
    return {
      m
      for m in third_party
      if not {requirement_name(d) for d in distributions.get(m, [m])} & declared
    }

  assert undeclared(imported_top_level([*MODULES, ROOT / 'launch.py'])) == set()
  assert undeclared({'numpy', 'yaml', 'os'}) == {'yaml'}


def test_lower_bounds_are_the_versions_constraints_txt_pins():
  """setup.py's lower bounds are what the suite runs with: constraints.txt pins each
  required package at exactly its lower bound."""
  pins = {}
  for line in (ROOT / 'constraints.txt').read_text().splitlines():
    if '==' in line and not line.startswith('#'):
      name, version = line.split('==')
      pins[requirement_name(name)] = version.strip()
  required, _ = declared_requirements()
  for requirement in required:
    bound = requirement.split('>=')[1].split(',')[0].strip()
    assert pins.get(requirement_name(requirement)) == bound, requirement

"""The lock and the requirements agree: every package that requirements*.txt asks for is pinned in
requirements-lock.txt (what scripts/setup.sh and CI install) at a version inside the requirement's range.
A raised floor without a matching pin would let a fresh machine install an untested version, or fail."""
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _lines(name: str):
    for line in (ROOT / name).read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line and not line.startswith('-'):
            yield line


def _lock() -> dict:
    pins = {}
    for line in _lines('requirements-lock.txt'):
        name, _, version = line.partition('==')
        assert version, f'requirements-lock.txt: {line!r} is not an exact pin'
        pins[canonicalize_name(name)] = version
    return pins


def test_every_requirement_is_pinned_in_the_lock_inside_its_range():
    pins = _lock()
    problems = []
    for name in ('requirements.txt', 'requirements-nodeps.txt'):
        for line in _lines(name):
            req = Requirement(line)
            pin = pins.get(canonicalize_name(req.name))
            if pin is None:
                problems.append(f'{name}: {line} has no pin in requirements-lock.txt')
            elif not req.specifier.contains(pin, prereleases=True):
                problems.append(f'{name}: {line} excludes the locked {req.name}=={pin}')
    assert not problems, '\n'.join(problems) + '\n(bash scripts/refresh_lock.sh rewrites the lock)'

#!/usr/bin/env bash
# Builds genro-asgi's two wheels, both manylinux_2_28 x86_64:
#   genro-asgi         the command (the Rust supervisor, no Python linked): one
#                      py3-none wheel (pyproject.toml);
#   genro-asgi-worker  the CPython extension module: one wheel per CPython version
#                      (worker/pyproject.toml).
# Then checks each with `auditwheel show` and lists them.
#
#   scripts/build-wheels.sh [--profile dev|release] [--out DIR] [PYTHON...]
#
# Without PYTHONs it builds a worker wheel for every CPython >= 3.10 it finds: pyenv's
# (if pyenv is installed), then /usr/bin/python3; one per tag (cp311 is built once, however
# many 3.11s there are). The dev profile (the default) is for CI: quicker to build, same
# checks; publish from --profile release.
#
# It installs its own tools (maturin, zig, auditwheel) into target/wheel-tools and builds
# in target/wheel, away from target/. Zig is the linker because it links against the
# glibc 2.28 symbol versions whatever the machine's glibc is; a native build would take
# the build machine's newer symbols and not be manylinux_2_28.
set -euo pipefail

usage() {
  echo "usage: scripts/build-wheels.sh [--profile dev|release] [--out DIR] [PYTHON...]" >&2
  exit 2
}

profile=dev
out=target/wheels
pythons=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) [ $# -ge 2 ] || usage; profile=$2; shift 2 ;;
    --release) profile=release; shift ;;
    --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
    -h | --help) usage ;;
    -*) echo "unknown option: $1" >&2; usage ;;
    *) pythons+=("$1"); shift ;;
  esac
done
case "$profile" in
  dev) profile_args=(--profile dev) ;;
  release) profile_args=(--release) ;;
  *) echo "--profile must be dev or release, not $profile" >&2; exit 2 ;;
esac
# Paths given on the command line are the caller's; everything else is the repository's.
out=$(realpath -m "$out")
for i in "${!pythons[@]}"; do
  if [[ ${pythons[$i]} == */* ]]; then pythons[$i]=$(realpath -ms "${pythons[$i]}"); fi
done
cd "$(dirname "$0")/.."
root=$PWD
started=$SECONDS

note() { echo "note: $*" >&2; }
step() { echo "==> $* ($((SECONDS - started))s)" >&2; }

# The command's wheel requires the worker's at exactly its own version, which is Cargo's.
version=$(awk '/^\[workspace\.package\]/ { s = 1; next } /^\[/ { s = 0 }
  s && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' Cargo.toml)
pin=$(grep -o '"genro-asgi-worker==[^"]*"' pyproject.toml | tr -d '"' || true)
if [ "$pin" != "genro-asgi-worker==$version" ]; then
  echo "pyproject.toml must require \"genro-asgi-worker==$version\" (Cargo.toml's version), not \"${pin:-nothing}\"" >&2
  exit 1
fi

# --- the interpreters --------------------------------------------------------------------
if [ ${#pythons[@]} -eq 0 ]; then
  if command -v pyenv >/dev/null; then
    pyenv_root=$(pyenv root)
    for dir in "$pyenv_root"/versions/3.1[0-9]*; do
      v=${dir##*/}
      minor=$(cut -d. -f1,2 <<<"$v")
      if [ -x "$dir/bin/python$minor" ]; then pythons+=("$dir/bin/python$minor")
      elif [ -x "$dir/bin/python3" ]; then pythons+=("$dir/bin/python3"); fi
    done
  fi
  [ -x /usr/bin/python3 ] && pythons+=(/usr/bin/python3)
fi
# Prints "cpython 3 12 cp312" ("cp313t" for a free-threaded build); runs on any python.
probe='import platform, sys
v = sys.version_info
sys.stdout.write("%s %d %d cp%d%d%s\n" % (platform.python_implementation().lower(),
                 v[0], v[1], v[0], v[1], getattr(sys, "abiflags", "")))'
declare -A by_tag=()
tags=()
for py in "${pythons[@]}"; do
  if ! info=$("$py" -c "$probe" 2>/dev/null); then
    note "skipping $py: it does not run"
    continue
  fi
  read -r impl major minor tag <<<"$info"
  if [ "$impl" != cpython ] || [ "$major" -ne 3 ] || [ "$minor" -lt 10 ]; then
    note "skipping $py: $impl $major.$minor is not CPython >= 3.10"
  elif [ -n "${by_tag[$tag]:-}" ]; then
    note "skipping $py: $tag is built with ${by_tag[$tag]}"
  else
    by_tag[$tag]=$py
    tags+=("$tag")
  fi
done
for minor in 10 11 12 13 14; do
  if [ -z "${by_tag[cp3$minor]:-}" ]; then
    note "no CPython 3.$minor found: NO genro-asgi-worker wheel for cp3$minor"
  fi
done
if [ ${#tags[@]} -eq 0 ]; then
  echo "no CPython >= 3.10 to build the worker for" >&2
  exit 1
fi

# --- the tools -----------------------------------------------------------------------------
# ziglang: 0.17.1 is tested; a new zig release can break maturin's linker wrapper.
tools=target/wheel-tools
requirements=('maturin>=1.9.4,<2' 'ziglang<0.18' 'auditwheel>=6')
if [ "$(cat "$tools/requirements" 2>/dev/null)" != "${requirements[*]}" ]; then
  step "installing ${requirements[*]} into $tools"
  rm -rf "$tools"
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
  echo "${requirements[*]}" >"$tools/requirements"
fi
# maturin finds zig as `python3 -m ziglang`: the tools' python3 must come first.
export PATH="$root/$tools/bin:$PATH"
export CARGO_TARGET_DIR="$root/target/wheel"

# --- the wheels ----------------------------------------------------------------------------
# Built into a staging folder of this run's own first, so the list below is this run's
# wheels and a wheel that fails its check never reaches --out.
mkdir -p "$CARGO_TARGET_DIR" "$out"
staging=$(mktemp -d "$CARGO_TARGET_DIR/staging.XXXXXX")
build=(maturin build --zig --compatibility manylinux_2_28 --locked "${profile_args[@]}" --out "$staging")

step "genro-asgi $version (py3-none), $profile profile"
"${build[@]}" --manifest-path supervisor/Cargo.toml
for tag in "${tags[@]}"; do
  step "genro-asgi-worker $version for $tag (${by_tag[$tag]}), $profile profile"
  "${build[@]}" --manifest-path worker/Cargo.toml --interpreter "${by_tag[$tag]}"
done

# --- the checks ----------------------------------------------------------------------------
step "checking the wheels"
failed=0
for wheel in "$staging"/*.whl; do
  report=$(auditwheel show "$wheel" 2>&1) || { echo "$report" >&2; failed=1; continue; }
  # auditwheel wraps its lines: read the report as one line.
  flat=$(tr -s '\n ' '  ' <<<"$report")
  platform=$(grep -o 'consistent with the following platform tag: "[^"]*"' <<<"$flat" | cut -d'"' -f2 || true)
  glibc_minor=$(sed -n 's/^manylinux_2_\([0-9]*\)_x86_64$/\1/p' <<<"$platform")
  if [ -z "$glibc_minor" ] || [ "$glibc_minor" -gt 28 ]; then
    echo "$report" >&2
    echo "FAIL ${wheel##*/}: not manylinux_2_28 (auditwheel: ${platform:-no platform tag})" >&2
    failed=1
  else
    echo "${wheel##*/}: auditwheel: consistent with $platform"
  fi
  # The extension module takes its Python symbols from the python that loads it: a
  # libpython among its needed libraries would not load in a python built without a
  # shared libpython (pyenv's and Debian's are), so none may be there (maturin sees to it
  # with PYO3_BUILD_EXTENSION_MODULE).
  if ! python3 - "$wheel" <<'EOF'; then failed=1; fi
import io, sys, zipfile
from elftools.elf.elffile import ELFFile
wheel = sys.argv[1]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        data = z.read(name)
        if not data.startswith(b"\x7fELF"):
            continue
        dynamic = ELFFile(io.BytesIO(data)).get_section_by_name(".dynamic")
        needed = [t.needed for t in dynamic.iter_tags("DT_NEEDED")] if dynamic else []
        if any(lib.startswith("libpython") for lib in needed):
            sys.exit(f"FAIL {wheel.rsplit('/', 1)[-1]}: {name} links {needed}")
EOF
done
[ "$failed" -eq 0 ] || { echo "some wheels failed their checks; they are in $staging" >&2; exit 1; }

built=("$staging"/*.whl)
mv -f "${built[@]}" "$out"/
rmdir "$staging"
step "done"
echo "wheels in $out:"
for wheel in "${built[@]}"; do echo "  ${wheel##*/}"; done

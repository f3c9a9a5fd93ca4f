#!/usr/bin/env bash
# Generates the Kotlin, Swift and Python sources of mesh-ffi into
# bindings/mesh-ffi/generated/{kotlin,swift,python} (git-ignored), next to a
# copy of the native library for Python and Kotlin (JNA) to load.
#
#   bindings/mesh-ffi/generate.sh            # debug build
#   PROFILE=release bindings/mesh-ffi/generate.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

profile="${PROFILE:-debug}"
flag=""
if [ "$profile" = release ]; then flag="--release"; fi
target_dir="${CARGO_TARGET_DIR:-$root/target}"

# MESH_FFI_BUILD: other cargo build arguments that include both (the test
# script passes its workspace-wide ones, so nothing is compiled twice).
# shellcheck disable=SC2086
cargo build -q $flag ${MESH_FFI_BUILD:--p mesh-ffi -p uniffi-bindgen}
case "$(uname -s)" in
  Darwin) lib="libmesh_ffi.dylib" ;;
  *) lib="libmesh_ffi.so" ;;
esac
library="$target_dir/$profile/$lib"
bindgen="$target_dir/$profile/uniffi-bindgen"

out="$here/generated"
rm -rf "$out"
for language in kotlin swift python; do
  "$bindgen" generate --library "$library" --language "$language" \
    --out-dir "$out/$language" --no-format >/dev/null
done
# Python's module and Kotlin's JNA look for the library by file name.
cp "$library" "$out/python/"
cp "$library" "$out/kotlin/"
echo "generated $out/{kotlin,swift,python}"

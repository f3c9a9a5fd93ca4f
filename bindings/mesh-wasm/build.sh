#!/usr/bin/env bash
# Builds mesh-wasm for wasm32-unknown-unknown and runs wasm-bindgen into two
# npm-ready folders (git-ignored), each with TypeScript types:
#
#   bindings/mesh-wasm/pkg/      --target nodejs  (require('mesh-wasm'))
#   bindings/mesh-wasm/pkg-web/  --target web     (ES module; call init() first)
#
#   bindings/mesh-wasm/build.sh              # debug build
#   PROFILE=release bindings/mesh-wasm/build.sh
#
# Needs the wasm32-unknown-unknown target and wasm-bindgen-cli at exactly the
# wasm-bindgen version in Cargo.lock (scripts/test.sh installs both).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

profile="${PROFILE:-debug}"
flag=""
if [ "$profile" = release ]; then flag="--release"; fi
target_dir="${CARGO_TARGET_DIR:-$root/target}"

cargo build -q $flag -p mesh-wasm --target wasm32-unknown-unknown
wasm="$target_dir/wasm32-unknown-unknown/$profile/mesh_wasm.wasm"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../../Cargo.toml" | head -1)"

for target in nodejs web; do
  out="$here/pkg"
  main="mesh_wasm.js"
  if [ "$target" = web ]; then out="$here/pkg-web"; fi
  rm -rf "$out"
  wasm-bindgen --target "$target" --out-dir "$out" --out-name mesh_wasm "$wasm"
  type=commonjs
  if [ "$target" = web ]; then type=module; fi
  cat > "$out/package.json" <<JSON
{
  "name": "mesh-wasm",
  "version": "$version",
  "description": "The mesh client SDK for JavaScript (wasm-bindgen, --target $target).",
  "license": "MIT OR Apache-2.0",
  "type": "$type",
  "main": "$main",
  "types": "mesh_wasm.d.ts",
  "files": ["mesh_wasm.js", "mesh_wasm.d.ts", "mesh_wasm_bg.wasm", "mesh_wasm_bg.wasm.d.ts"]
}
JSON
done
echo "built $here/pkg (nodejs) and $here/pkg-web (web)"

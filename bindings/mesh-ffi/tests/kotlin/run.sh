#!/usr/bin/env bash
# Compiles the generated Kotlin binding with ChatTest.kt and P2pTest.kt (one
# kotlinc run) and runs them against a real mesh-server (one JVM: the chat
# test, then the P2P transfers, direct and relayed). Needs
# bindings/mesh-ffi/generate.sh to have run, Java 17+, Debian's libjna-java
# and `npm ci` here (kotlin-compiler brings kotlinc and kotlinx-coroutines).
#
#   MESH_SERVER_BIN=target/debug/mesh-server bindings/mesh-ffi/tests/kotlin/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
generated="$here/../../generated/kotlin"
kotlin="$here/node_modules/kotlin-compiler"
chmod +x "$kotlin"/bin/*
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
classpath="/usr/share/java/jna.jar:$kotlin/lib/kotlinx-coroutines-core-jvm.jar"
"$kotlin/bin/kotlinc" -nowarn -cp "$classpath" -d "$out/chat.jar" \
  "$generated/uniffi/mesh_ffi/mesh_ffi.kt" "$here/ChatTest.kt" "$here/P2pTest.kt"
java -Djna.library.path="$generated" \
  -cp "$out/chat.jar:$classpath:$kotlin/lib/kotlin-stdlib.jar" \
  ChatTestKt "$MESH_SERVER_BIN"

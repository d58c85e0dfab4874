#!/usr/bin/env bash
# Fetches the Zipkin server (one executable jar) from Maven Central into the
# per-machine cache, where `dapr init` would have run it as a container.
# Without Java the stack runs without tracing; tools/stack.py says so.
set -euo pipefail

ZIPKIN_VERSION="${ZIPKIN_VERSION:-3.6.1}"
TDA_HOME="${TDA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/tiny-durable-agent}"
JAR="$TDA_HOME/zipkin/zipkin-server-$ZIPKIN_VERSION-exec.jar"

say() { printf '[zipkin] %s\n' "$*" >&2; }

[ -f "$JAR" ] && exit 0
if ! command -v java >/dev/null 2>&1; then
  say "Java is not installed, so tracing stays off (Zipkin needs Java 17+: apt-get install openjdk-17-jre-headless)."
  exit 0
fi
if ! command -v mvn >/dev/null 2>&1; then
  say "Maven is not installed, so Zipkin cannot be fetched and tracing stays off (apt-get install maven)."
  exit 0
fi
say "fetching io.zipkin:zipkin-server:$ZIPKIN_VERSION (one jar, about 135 MB) from Maven Central"
mkdir -p "$TDA_HOME/zipkin"
mvn -q -B -Dstyle.color=never org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
  -Dartifact="io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec" \
  -DoutputDirectory="$TDA_HOME/zipkin.partial" -Dmdep.useBaseVersion=true
mv "$TDA_HOME/zipkin.partial/zipkin-server-$ZIPKIN_VERSION-exec.jar" "$JAR"
rm -rf "$TDA_HOME/zipkin.partial"
say "installed $JAR"

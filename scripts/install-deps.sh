#!/usr/bin/env bash
# Installs the Debian packages headalign builds and tests with (only those that are missing).
set -euo pipefail
packages=(cmake g++ make libeigen3-dev catch2 nlohmann-json3-dev libopenblas-dev liblapacke-dev libbenchmark-dev libcli11-dev python3-numpy libxtensor-dev doxygen clang clang-format libclang-rt-dev
          python3-dev python3-venv python3-pytest python3-scipy python3-torch)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

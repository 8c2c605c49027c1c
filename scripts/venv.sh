# Sourced by scripts/test and scripts/serve: apt-get helpers and the project virtualenv.
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
# ensure_venv EXTRAS: create $venv (python3-venv from apt when missing), install the package.
ensure_venv() {
  python=${PYTHON:-python3}
  venv=${DPRL_VENV:-.venv}
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" 2>/dev/null || { rm -rf "$venv"; apt_install python3-venv && "$python" -m venv "$venv"; }
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".$1"
}
# ensure_test_tools: what the suite runs beside Python (apt-get when missing)
ensure_test_tools() {
  command -v redis-server >/dev/null || apt_install redis-server
  command -v curl >/dev/null || apt_install curl
  command -v prometheus >/dev/null || apt_install prometheus  # tests/test_prometheus.py scrapes the admin listener
  command -v tinyproxy >/dev/null || apt_install tinyproxy  # a real HTTP parent proxy (tests/integration/test_parents.py)
  command -v danted >/dev/null || apt_install dante-server  # a real SOCKS5 parent proxy
  command -v chromium >/dev/null || apt_install chromium  # a real browser for the console (tests/integration/test_console.py)
}

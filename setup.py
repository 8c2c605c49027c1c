import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path("dprl/version.py").read_text(encoding="utf-8"))[1]

setup(
    name="dprl",
    version=VERSION,
    description="HTTP(S) forward proxy that caps concurrent upstream connections per host, locally or fleet-wide through Redis",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dprl", "dprl.*"]),
    package_data={"dprl": ["py.typed"], "dprl.redis": ["lua/*.lua"], "dprl.ops": ["console.html", "console.js"]},
    zip_safe=False,  # py.typed: type checkers read the installed sources
    install_requires=[
        "gevent>=23.9.1",
        "configargparse>=1.0",
        "prometheus_client>=0.9",
    ],
    extras_require={
        # Redis replies parsed in C; without it dprl's own pure-Python RESP reader is used
        "hiredis": ["hiredis>=2.0"],
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "requests>=2.31",
            "trustme>=1.1",
            "hypothesis>=6.100",
            "h11>=0.14",
            "dnspython>=2.4",  # GEVENT_RESOLVER=dnspython in tests/test_library_manners.py
            "gunicorn>=21.2",  # tests/test_gunicorn.py: embedding under gunicorn -k gevent
            "redis>=4.5",
            "websocket-client>=1.6",  # tests/support/browser.py: Chromium's DevTools protocol (a WebSocket)
            "ruff>=0.6",
            "mypy>=1.8",  # scripts/test type-checks dprl/ (settings in pyproject.toml)
        ],
    },
    entry_points={"console_scripts": ["dprl = dprl.cli:main"]},
)

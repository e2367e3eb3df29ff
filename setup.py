"""Build the optional C data path; without a compiler or libssl-dev the install still works.

Everything else about the package is in pyproject.toml. The extension is `optional`: a failed
build prints setuptools' warning and wiretun falls back to its pure-Python data path.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "wiretun.datapath._native",
            ["src/wiretun/datapath/_native.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)

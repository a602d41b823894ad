"""The one place a SparkSession is built, so every session runs its Python workers right.

Spark starts its Python workers with `python3` from PATH unless told otherwise; outside an
activated virtualenv that interpreter lacks this project's packages (kafka-python, pydantic)
and the Kafka source fails in the worker. Pinning the current interpreter fixes that for the
CLI, the demo's child processes and the tests alike.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def build_spark_session(
    master: str = "local[2]", app_name: str = "streamrl", conf: Mapping[str, str] | None = None
) -> SparkSession:
    """A SparkSession in UTC with quiet logs; `conf` adds or overrides settings."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    settings = {
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.shuffle.partitions": "2",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        **(conf or {}),
    }
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session

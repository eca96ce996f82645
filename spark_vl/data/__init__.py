"""Task datasets: built-in synthetic visual tasks and loaders for the formats the field uses."""

from spark_vl.data.loaders import (BadRow, DatasetError, LoadedDataset, TaskSample, load_dataset, scan_dataset,
                                   verifiable, warn_bad_rows)

__all__ = ["BadRow", "DatasetError", "LoadedDataset", "TaskSample", "load_dataset", "scan_dataset", "verifiable",
           "warn_bad_rows"]

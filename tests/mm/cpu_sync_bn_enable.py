"""Importing this enables the test-only CPU SyncBatchNorm (see ``cpu_sync_bn``); for torchrun workers."""
import cpu_sync_bn

cpu_sync_bn.enable()

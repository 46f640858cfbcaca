"""Safe input and output: every file cka_lab writes goes through :mod:`cka_lab.io.safe_write`, every
folder it writes is locked (:mod:`cka_lab.io.lock`)."""

from cka_lab.io.lock import file_lock, folder_lock
from cka_lab.io.safe_write import (
    WRITE_ERRORS,
    atomic_write,
    check_not_input,
    check_writable_dir,
    made_dirs,
    open_append,
    output_dir,
    remove_empty_dirs,
    same_file,
    strict_json,
    temp_name,
    write_bytes,
    write_csv,
    write_json,
    write_text,
)

__all__ = [
    "WRITE_ERRORS",
    "atomic_write",
    "check_not_input",
    "check_writable_dir",
    "file_lock",
    "folder_lock",
    "made_dirs",
    "open_append",
    "output_dir",
    "remove_empty_dirs",
    "same_file",
    "strict_json",
    "temp_name",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_text",
]

"""Job functions that turn their runtime worker hostile: they make the worker report result
references it may not use (``out:../..``, absolute paths, links, FIFOs, another job's
file), as a compromised image or a malicious job could.

They patch the worker's encoder (``_stdio_worker._blob_putter``) from inside the job, so
the references come from the real worker protocol of a real container. Imported inside a
runtime by file name, with only the ``hither`` stand-in available.
"""

import hither as hi

PAD = 10_000  # bytes: large enough to be sent back as a result file


def _hijack(make_ref):
    """Let the worker encode this job's result with ``make_ref(out_dir)`` as the result
    file's reference, once."""
    import sys

    worker = sys.modules["_stdio_worker"]
    original = worker._blob_putter

    def putter(out_dir):
        def put_blob(kind, write):
            worker._blob_putter = original
            return make_ref(out_dir, original(out_dir), kind, write)
        return put_blob

    worker._blob_putter = putter


@hi.function("h_hostile_ref", "1")
def h_hostile_ref(how, target=None, name=None):
    """Return bytes whose result file reference is hostile in the way ``how`` says."""
    import os
    import uuid

    def make_ref(out_dir, put, kind, write):
        fresh = uuid.uuid4().hex
        path = os.path.join(out_dir, fresh)
        if how == "traversal":
            return "out:" + "../" * 40 + target.lstrip("/")
        if how == "absolute":
            return "out:" + target
        if how == "symlink":
            os.symlink(target, path)
            return "out:" + fresh
        if how == "hardlink":
            ref = put(kind, write)
            os.link(os.path.join(out_dir, ref[4:]), path)
            return ref
        if how == "fifo":
            os.mkfifo(path)
            return "out:" + fresh
        if how == "directory":
            os.mkdir(path)
            return "out:" + fresh
        if how == "dir-symlink":  # the job's own folder replaced by a link to a host folder
            os.rename(out_dir, out_dir + ".moved")
            os.symlink(target, out_dir)
            return "out:" + name
        if how == "named":  # a file this job did not write (another job's)
            return "out:" + name
        raise ValueError(how)

    _hijack(make_ref)
    return b"r" * PAD


@hi.function("h_leave_file", "1")
def h_leave_file(text):
    """Leave a file the worker could name later, in the job's output folder and in the
    worker's working folder; return its name."""
    import os
    import uuid

    name = uuid.uuid4().hex
    with open(os.path.join(os.getcwd(), name), "w") as f:
        f.write(text)

    def make_ref(out_dir, put, kind, write):
        with open(os.path.join(out_dir, name), "w") as f:
            f.write(text)
        return put(kind, write)

    _hijack(make_ref)
    return {"name": name, "pad": b"p" * PAD}

"""A Galaxy job laid out as galaxy-helm lays it out (galaxyproject/galaxy-helm, galaxy/values.yaml).

The chart keeps everything on one PVC mounted at ``/galaxy/server/database`` (``persistence.mountPath``):
the job directories (``jobs_directory``), the object store (``objects``, datasets stored by uuid in
hashed directories), ``tmp``, ``tool-data``, ``tools``, ``shed_tools``; and it mounts into every job pod
(``k8s_persistent_volume_claims`` of its job_conf.yml)::

    galaxy-pvc/config:/galaxy/server/database/config:r
    galaxy-pvc/tmp:/galaxy/server/database/tmp:rw
    galaxy-pvc/tool-data:/galaxy/server/database/tool-data:rw
    galaxy-pvc/tools:/galaxy/server/database/tools:r
    galaxy-pvc/shed_tools:/galaxy/server/database/shed_tools:r
    galaxy-refdata-gxy-pvc/data.galaxyproject.org:/cvmfs/data.galaxyproject.org:r
    galaxy-pvc/cvmfsclone:/cvmfs/cloud.galaxyproject.org:r

With ferry, ``k8s_data_volume_claim`` and ``k8s_working_volume_claim`` are dropped (ferry's emptyDirs
replace them) and ``k8s_persistent_volume_claims`` is kept as is. Here the Galaxy root is
``BASE/galaxy/server`` instead of ``/galaxy/server`` (the test machine's ``/galaxy`` is not ours); CVMFS
keeps its real path, ``/cvmfs/data.galaxyproject.org``, inside the pod.
"""

from pathlib import Path

import galaxy_stubs
from harness import GalaxyJob

PVC = "galaxy-pvc"
REFDATA_PVC = "galaxy-refdata-gxy-pvc"
CVMFS = "/cvmfs/data.galaxyproject.org"
CLOUD_CVMFS = "/cvmfs/cloud.galaxyproject.org"
# (subPath on the claim, mount path relative to the PVC's mountPath or absolute, access)
CHART_MOUNTS = [
    (PVC, "config", "config", "r"),
    (PVC, "tmp", "tmp", "rw"),
    (PVC, "tool-data", "tool-data", "rw"),
    (PVC, "tools", "tools", "r"),
    (PVC, "shed_tools", "shed_tools", "r"),
    (REFDATA_PVC, "data.galaxyproject.org", CVMFS, "r"),
    (PVC, "cvmfsclone", CLOUD_CVMFS, "r"),
]
TOOL_SHED_PATH = "shed_tools/toolshed.g2.bx.psu.edu/repos/iuc/ferry_upper/0123456789ab/ferry_upper"


class HelmGalaxyJob(GalaxyJob):
    """One input dataset in Galaxy's own disk object store (``database/objects/x/y/z/dataset_<uuid>.dat``),
    a job directory under ``database/jobs_directory``, a tool installed from a tool shed under
    ``database/shed_tools``, reference data on (a stand-in for) CVMFS."""

    def make_files(self, base, outputs_to_working_directory):
        self.root = base / "galaxy/server"
        self.database = self.root / "database"  # persistence.mountPath
        self.refdata = base / "refdata"  # what the refdata PVC holds
        for _, sub, _, _ in CHART_MOUNTS:
            (self.refdata if sub == "data.galaxyproject.org" else self.database).joinpath(sub).mkdir(parents=True)
        self.store = galaxy_stubs.object_store(self.database / "objects")
        self.hda = galaxy_stubs.input_hda(self.store, 1, 1, "reads 1.fastq", "acgt\nttga\n")
        self.input = Path(self.hda.get_file_name())
        self.input_metadata = self.input_extra = None
        self.job_dir = self.database / "jobs_directory/000" / str(self.id)
        self.tool_dir = self.database / TOOL_SHED_PATH
        self.tool_dir.mkdir(parents=True)
        (self.tool_dir / "upper.sh").write_text('tr a-z A-Z < "$1" > "$2"\n')
        builds = self.refdata / "data.galaxyproject.org/managed/location/builds.txt"
        builds.parent.mkdir(parents=True)
        builds.write_text("hg38\tHuman Dec. 2013 (GRCh38/hg38) (hg38)\n")
        (self.database / "tool-data/marker.txt").write_text("from the tool-data PVC\n")
        real = self.database / "objects/0/0/0/dataset_output.dat"
        self.output_dataset = galaxy_stubs.output_dataset_path(2, real, self.job_dir, outputs_to_working_directory)
        self.output = Path(str(self.output_dataset))
        self.job_io = galaxy_stubs.JobIO(datasets=[self.hda], outputs=[self.output_dataset])

    def k8s_params(self):
        claims = []
        for claim, sub, path, access in CHART_MOUNTS:
            mount = path if path.startswith("/") else f"{self.database}/{path}"
            claims.append(f"{claim}/{sub}:{mount}:{access}")
        return {"k8s_persistent_volume_claims": ",".join(claims)}

    def host_paths(self):
        """Where each claim's files are on this machine (podman mounts them as hostPaths)."""
        return {PVC: str(self.database), REFDATA_PVC: str(self.refdata)}

    def mount_paths(self):
        return [p if p.startswith("/") else f"{self.database}/{p}" for _, _, p, _ in CHART_MOUNTS]

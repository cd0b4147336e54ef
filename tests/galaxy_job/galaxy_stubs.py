"""Galaxy's own job code (galaxy-app 26.1.2 from PyPI) with only the server parts stubbed, for ferry tests.

Used by make_job.py (writes a job and its Kubernetes Job without a cluster) and tests/galaxy (drives a
job runner through queue_job, the monitor's decision and finish_job / fail_job). Stubbed:

- the database: ``NoDb`` session; the job is a transient ``galaxy.model.Job``;
- ``JobWrapper.prepare()``: a real one evaluates the tool's Cheetah template; we set the evaluated
  command line and the HOME/TMP variables the evaluator adds;
- the tool: a stand-in whose fields come from a real ``XmlToolSource`` (profile 24.0 XML below),
  parsed the way ``galaxy.tools.Tool.parse`` does;
- ``job_io``: inputs and outputs as Galaxy's JobIO returns them (paths built with Galaxy's own
  DatasetPath and path rewriter), script-integrity settings at Galaxy's defaults;
- the end of the job: ``JobWrapper.finish`` / ``fail`` (database and dataset bookkeeping) record what
  Galaxy concluded instead; ``setup_external_metadata`` records what the metadata step would read.
"""

import os
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Optional
from xml.etree.ElementTree import (
    ElementTree,
    fromstring,
)

from galaxy import model
from galaxy.datatypes.registry import Registry
from galaxy.job_execution.setup import JobIO as GalaxyJobIO
from galaxy.objectstore import DiskObjectStore
from galaxy.job_execution.datasets import (
    DatasetPath,
    get_path_rewriter,
)
from galaxy.job_metrics import JobMetrics
from galaxy.jobs import MinimalJobWrapper
from galaxy.jobs.job_destination import JobDestination
from galaxy.tool_util.deps.containers import ContainerFinder
from galaxy.tool_util.deps.dependencies import AppInfo
from galaxy.tool_util.output_checker import DETECTED_JOB_STATE
from galaxy.tool_util.parser import get_tool_source
from galaxy.tools import Tool as GalaxyTool

TOOL_XML = """<tool id="{tool_id}" name="ferry test" version="{version}" profile="24.0">
    <requirements><container type="docker">{image}</container></requirements>
    <command>unused: the evaluated command line is set by the test</command>
</tool>"""

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""
KUBE_SERVER = "https://127.0.0.1:1"


class NoDb:
    """Stands in for app.model.context (a SQLAlchemy session) for a transient job."""

    def __init__(self, job):
        self.job = job

    def get(self, cls, ident):
        if cls is not model.Job or ident != self.job.id:
            raise LookupError(f"no {cls.__name__} {ident}")
        return self.job

    def add(self, obj):
        pass

    def commit(self):
        pass

    def refresh(self, obj):
        pass

    def expire(self, obj, attrs=None):
        pass


class Tool:
    """The fields of galaxy.tools.Tool that the k8s runner and TPV read, filled like Tool.parse() does."""

    requires_galaxy_python_environment = GalaxyTool.requires_galaxy_python_environment  # the real property
    produces_entry_points = False
    tool_type = "default"
    tool_shed = None
    dynamic_tool = None  # a tool from the toolbox, not a user-defined one (TPV reads it)

    def __init__(self, app, image, tool_id="ferry_test", version="1.0", tool_dir=None):
        self.app = app
        self.tool_dir = tool_dir
        xml = TOOL_XML.format(image=image, tool_id=tool_id, version=version)
        src = get_tool_source(xml_tree=ElementTree(fromstring(xml)))
        self.profile = float(src.parse_profile())
        self.id = self.old_id = src.parse_id()
        self.version = src.parse_version()
        self.home_target = src.parse_home_target()  # Tool.parse, tools/__init__.py:1404
        self.tmp_target = src.parse_tmp_target()  # :1405
        self.tmp_directory_vars = src.parse_tmp_directory_vars()  # :1402
        self.docker_env_pass_through = src.parse_docker_env_pass_through()  # :1418
        self.strict_shell = src.parse_strict_shell()  # :1515
        self.requirements, self.containers, self.resource_requirements, *_ = src.parse_requirements()  # :1536
        # profile >= 16.04 without <stdio>: a non-zero exit code is an error (Tool.parse_stdio)
        self.stdio_exit_codes, self.stdio_regexes = src.parse_stdio()

    def build_dependency_shell_commands(self, job_directory=None):
        return []  # no tool dependency resolution: the container provides the tool

    def find_output_def(self, name):
        return None  # no from_work_dir outputs

    def get_param_values(self, job, ignore_errors=False):
        return {}  # no parameters, so no __job_resource for Galaxy's JobRunnerMapper to pass to a rule


class JobIO:
    """job_io as the k8s runner and ferry's runner use it; integrity settings are Galaxy's defaults
    (config_schema.yml). ``inputs``: what JobIO.get_input_fnames returns (each dataset's file, its
    metadata files, its extra-files directory when it exists); ``outputs``: DatasetPath objects.

    With ``datasets`` (real HistoryDatasetAssociations, see ``input_hda``) instead of ``inputs``, the
    input methods are Galaxy's own (galaxy.job_execution.setup.JobIO)."""

    check_job_script_integrity = True
    check_job_script_integrity_count = 35
    check_job_script_integrity_sleep = 0.25
    version_path = None

    def __init__(self, inputs=(), outputs=(), datasets=None):
        self.inputs = [str(p) for p in inputs]
        self.outputs = list(outputs)
        self.datasets = datasets
        if datasets is not None:
            self.get_input_datasets = lambda materialized_objects=None: list(self.datasets)
            self.get_input_dataset_fnames = lambda ds: GalaxyJobIO.get_input_dataset_fnames(self, ds)

    def get_output_fnames(self):
        return self.outputs

    def get_input_fnames(self):
        if self.datasets is not None:
            return GalaxyJobIO.get_input_fnames(self)
        return self.inputs


_REGISTRY = None


def object_store(file_path):
    """Galaxy's own disk object store (store_by uuid: FILE_PATH/7/5/2/dataset_<uuid>.dat, as galaxy-helm
    keeps it under /galaxy/server/database/objects), set as the store of every model.Dataset."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
        _REGISTRY.load_datatypes()
        model.set_datatypes_registry(_REGISTRY)
    file_path = str(file_path)
    config = SimpleNamespace(
        file_path=file_path, object_store_store_by="uuid", jobs_directory=os.path.join(file_path, "..", "jobs"),
        new_file_path=os.path.join(file_path, "..", "tmp"), umask=0o022, object_store_check_old_style=False,
        gid=os.getgid(), object_store_cache_path=os.path.join(file_path, "..", "cache"),
        object_store_cache_size=-1, enable_quotas=False,
    )
    store = DiskObjectStore(config, {"files_dir": file_path})
    model.Dataset.object_store = store
    return store


def input_hda(store, dataset_id, hid, name, content=None, state="ok"):
    """A history dataset in ``store``; its file holds ``content`` (None: no file is written)."""
    dataset = model.Dataset(id=dataset_id, state=state)
    dataset.uuid = uuid.uuid4()
    hda = model.HistoryDatasetAssociation(id=dataset_id, hid=hid, name=name, extension="txt", dataset=dataset,
                                          create_dataset=False)
    if content is not None:
        store.create(dataset)
        with open(hda.get_file_name(), "w") as f:
            f.write(content)
    return hda


def output_dataset_path(dataset_id, real_path, working_directory, outputs_to_working_directory):
    """A DatasetPath as JobIO.compute_outputs (job_execution/setup.py:279) builds it: Galaxy's own path
    rewriter gives the false path (WD/outputs/dataset_<uuid>.dat) with outputs_to_working_directory,
    which is pre-created empty; the extra-files directory sits next to the path the job writes."""
    dataset = SimpleNamespace(dataset=SimpleNamespace(uuid=uuid.uuid4()))
    rewriter = get_path_rewriter(outputs_to_working_directory, working_directory, "outputs", is_task=False)
    false_path = rewriter.rewrite_dataset_path(dataset, "output")
    if false_path and not os.path.exists(false_path):
        os.makedirs(os.path.dirname(false_path), exist_ok=True)
        with open(false_path, "ab"):
            pass
    extra_files = os.path.join(os.path.dirname(false_path or str(real_path)), f"dataset_{dataset.dataset.uuid}_files")
    return DatasetPath(dataset_id, str(real_path), false_path=false_path, false_extra_files_path=extra_files)


@dataclass
class Outcome:
    """What Galaxy concluded about the job: JobWrapper.finish(...) or JobWrapper.fail(...)."""

    call: str
    message: Optional[str] = None
    exit_code: Optional[int] = None
    tool_stdout: Optional[str] = None
    tool_stderr: Optional[str] = None
    detected_state: Optional[str] = None
    kwargs: dict = field(default_factory=dict)


class JobWrapper(MinimalJobWrapper):
    """The real MinimalJobWrapper (shell, tmp/home dirs, command line, destination config, exit code
    checks, ...), with the DB- and tool-evaluation parts replaced and the end of the job recorded."""

    def __init__(self, job, app, tool, destination, job_dir, tool_command, job_io=None, galaxy_lib_dir=None):
        super().__init__(job, app, tool=tool)
        self._destination = destination
        self._job_dir = str(job_dir)
        self._tool_command = tool_command
        self._job_io = job_io or JobIO()
        self.outcomes: list[Outcome] = []
        self.metadata_saw: Optional[dict] = None
        if galaxy_lib_dir:
            self._MinimalJobWrapper__galaxy_lib_dir = galaxy_lib_dir
        self._setup_working_directory(job=job)  # real: sets working_directory, creates working/, outputs/

    @property
    def job_destination(self):
        return self._destination

    def _create_working_directory(self, job):
        os.makedirs(self._job_dir, exist_ok=True)
        return self._job_dir

    def prepare(self, compute_environment=None):
        # What ToolEvaluator.build() returns for a tool without params: the evaluated command line,
        # and HOME / TMPDIR settings as in galaxy/tools/evaluation.py:890-896.
        self.command_line = self._tool_command
        if home_dir := self.home_directory():
            self.environment_variables.append(dict(name="HOME", value=f'"{home_dir}"', raw=True))
        if tmp_dir := self.tmp_directory():
            for var in self.tool.tmp_directory_vars:
                self.environment_variables.append(dict(name=var, value=f'"{tmp_dir}"', raw=True))

    def setup_external_metadata(self, output_fnames=None, **kwds):
        # The metadata step reads every output on the head node: record what it would find.
        self.metadata_saw = {str(p): _read(str(p)) for p in (output_fnames or [])}
        return "true"

    def fail(self, message, exception=False, tool_stdout="", tool_stderr="", **kwds):
        self.outcomes.append(Outcome("fail", message=message, tool_stdout=tool_stdout, tool_stderr=tool_stderr,
                                     kwargs=kwds))
        self.get_job().set_state(model.Job.states.ERROR)

    def finish(self, tool_stdout, tool_stderr, tool_exit_code=None, check_output_detected_state=None, **kwds):
        self.outcomes.append(Outcome("finish", exit_code=tool_exit_code, tool_stdout=tool_stdout,
                                     tool_stderr=tool_stderr, detected_state=check_output_detected_state,
                                     kwargs=kwds))
        ok = check_output_detected_state == DETECTED_JOB_STATE.OK
        self.get_job().set_state(model.Job.states.OK if ok else model.Job.states.ERROR)


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def new_job(job_id):
    job = model.Job()
    job.id = job_id
    job.state = model.Job.states.QUEUED
    return job


def make_app(job, outputs_to_working_directory=True):
    config = SimpleNamespace(
        redact_email_in_job_name=True,
        server_name="main",
        environment_setup_file=None,
        cleanup_job="never",  # keep the job directory for the checks
        outputs_to_working_directory=outputs_to_working_directory,
        preserve_python_environment="legacy_only",  # Galaxy's default
        retry_job_output_collection=0,  # Galaxy's default
        metadata_strategy="directory",  # Galaxy's default
    )
    return SimpleNamespace(
        config=config,
        model=SimpleNamespace(context=NoDb(job)),
        job_metrics=JobMetrics(None, None),  # Galaxy's default: the "core" plugin
        container_finder=ContainerFinder(AppInfo()),
        datatypes_registry=SimpleNamespace(
            set_external_metadata_tool=SimpleNamespace(build_dependency_shell_commands=lambda job_directory: [])
        ),
    )


def k8s_destination(shell="/bin/sh", **params):
    """A k8s destination as job_conf defines it; shell /bin/sh because the tool image has no bash."""
    return JobDestination(id="k8s", runner="k8s", shell=shell, params={"docker_enabled": True, **params})

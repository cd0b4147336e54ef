"""One Galaxy job through ferry's runner with Galaxy's real job wrapper: no stub between Galaxy and ferry.

``RealGalaxyJob`` builds what a Galaxy server holds for a job submitted from the tool form: Galaxy's own
model in a real SQLite database (``GalaxyApp``, on ``galaxy.model.unittest_utils.data_app.GalaxyDataTestApp``,
the app of Galaxy's model tests), a disk object store, a tool parsed from XML by
``galaxy.tools.create_tool_from_source``, a history with the input dataset, and a ``galaxy.model.Job`` with
its input and output associations. The job is wrapped in ``galaxy.jobs.JobWrapper`` itself and queued by
its own ``enqueue``, so the runner uses Galaxy's real ``JobIO`` (input files, output paths, extra-files
paths), ``JobWrapper.prepare`` (the tool's Cheetah command line), the metadata step of Galaxy's Kubernetes
runner (``set_metadata`` run on the handler after ``collect``, ``directory`` or ``extended`` strategy) and
``JobWrapper.finish`` (outputs, extra files and metadata into the database and the object store).

Only the cluster is replaced: the Kubernetes API is ``kube.FakeKubernetesApi`` and the Job's pod runs in
podman against the S3 server, as in ``harness.GalaxyJob``.
"""

import os
import queue
import random
from pathlib import Path
from types import SimpleNamespace

from galaxy import model
from galaxy.config import GALAXY_CONFIG_SCHEMA_PATH
from galaxy.config.schema import AppSchema
from galaxy.job_metrics import JobMetrics
from galaxy.jobs import JobConfigurationLimits, JobWrapper
from galaxy.jobs.job_destination import JobDestination
from galaxy.model.unittest_utils.data_app import GalaxyDataTestApp, GalaxyDataTestConfig
from galaxy.quota import NoQuotaAgent
from galaxy.tool_util.deps.containers import ContainerFinder
from galaxy.tool_util.deps.dependencies import AppInfo
from galaxy.tool_util.parser import get_tool_source
from galaxy.tools import create_tool_from_source
from galaxy.util import StructuredExecutionTimer
from galaxy.util.bunch import Bunch
from galaxy.web_stack import ApplicationStack

import galaxy_stubs
import harness
import kube
import podlib
from ferry_galaxy.runner import FerryKubernetesJobRunner

# An html report with files beside it (its extra-files directory: a sub-directory, binary bytes) and a
# table whose metadata Galaxy's set_metadata computes (columns, types, lines) and the tool names in its
# working directory (galaxy.json: name, dbkey, info). Profile 24.0: a non-zero exit code is an error.
TOOL_XML = """<tool id="ferry_report" name="report with extra files" version="1.0" profile="24.0">
    <requirements><container type="docker">{image}</container></requirements>
    <command><![CDATA[
mkdir -p '$report.extra_files_path/img' &&
tr a-z A-Z < '$input' > '$report.extra_files_path/upper.txt' &&
printf 'PNG\\001\\000\\377' > '$report.extra_files_path/img/plot.png' &&
echo '<html><a href="upper.txt">upper</a> <img src="img/plot.png"/></html>' > '$report' &&
printf 'chr1\\t100\\t0.5\\nchr2\\t200\\t1.5\\n' > '$table' &&
echo '{"table": {"name": "counts from the pod", "dbkey": "hg38", "info": "2 regions"}}' > galaxy.json{end}
    ]]></command>
    <inputs>
        <param name="input" type="data" format="txt" label="input"/>
    </inputs>
    <outputs>
        <data name="report" format="html" label="report"/>
        <data name="table" format="tabular" label="table"/>
    </outputs>
</tool>
"""


class RealGalaxyJob(harness.RunsPods):
    """A job of TOOL_XML on one input dataset, held in Galaxy's database, run through ferry's runner."""

    def __init__(self, s3, base, metadata_strategy="directory", outputs_to_working_directory=True, store_by="uuid",
                 command_end="", **destination_params):
        """``command_end``: shell appended to the tool's command (e.g. a failure); ``destination_params``:
        the k8s destination's params (``k8s_run_as_user_id``...)."""
        self.base = Path(base)
        self.s3 = s3
        self.id = None
        self.app = self.new_app(metadata_strategy, outputs_to_working_directory, store_by)
        self.tool = self.new_tool(command_end)
        self.session = self.app.model.session
        self.input, self.report, self.table, self.job = self.new_job()
        # retry_metadata_internally off: metadata comes from Galaxy's set_metadata step or the job fails,
        # never from finish() computing it again when the step found nothing (Galaxy's default is on).
        self.destination = JobDestination(id="k8s", runner="k8s",
                                          params={"docker_enabled": True, "retry_metadata_internally": False,
                                                  **destination_params})
        self.bucket = harness.session_bucket(s3)
        self.prefix = f"galaxy-real-{self.id}"
        self.kubeconfig = self.base / "kubeconfig"
        self.kubeconfig.write_text(galaxy_stubs.KUBECONFIG)
        self.api = kube.FakeKubernetesApi()
        self.runner = self.new_runner()
        self.wrapper = None
        self.ajs = None

    def new_app(self, metadata_strategy, outputs_to_working_directory, store_by):
        root = self.base / "galaxy"
        root.mkdir(parents=True)
        # A database file, not :memory:: ferry's stage and collect pools use their own connections.
        app = GalaxyApp(root=str(root), database_connection=f"sqlite:///{root}/galaxy.sqlite", store_by=store_by)
        config = app.config
        config.metadata_strategy = metadata_strategy
        config.outputs_to_working_directory = outputs_to_working_directory
        return app

    def new_tool(self, command_end):
        tool_dir = self.base / "galaxy/tools/ferry_report"
        tool_dir.mkdir(parents=True)
        tool_file = tool_dir / "report.xml"
        tool_file.write_text(TOOL_XML.replace("{image}", podlib.TOOL_IMAGE).replace("{end}", command_end))
        tool = create_tool_from_source(self.app, get_tool_source(str(tool_file)), config_file=str(tool_file))
        self.app.toolbox = OneToolBox(tool)
        return tool

    def new_job(self):
        """A user's history with the input dataset, and the job the tool form would create on it."""
        session = self.session
        user = model.User(email="ferry@example.org", password="not-used")
        history = model.History(user=user, name="ferry")
        session.add_all([user, history])
        session.commit()
        data = self.new_hda(history, "input.txt", "txt")
        data.state = model.Dataset.states.OK
        self.app.object_store.create(data.dataset)
        with open(data.get_file_name(), "w") as f:
            f.write("acgt\nttga\n")
        data.set_size()
        data.init_meta()
        report = self.new_hda(history, "report", "html")
        table = self.new_hda(history, "table", "tabular")
        job = model.Job()
        job.id = random.randrange(10**6, 10**7)  # podman names volumes after the job id: keep them unique
        self.id = job.id
        job.user, job.history = user, history
        job.tool_id, job.tool_version = self.tool.id, self.tool.version
        job.galaxy_version = "26.1"
        job.state = model.Job.states.NEW
        for name, value in self.tool.params_to_strings({"input": data}, self.app).items():
            job.add_parameter(name, value)
        job.add_input_dataset("input", data)
        job.add_output_dataset("report", report)
        job.add_output_dataset("table", table)
        session.add(job)
        session.commit()
        return data, report, table, job

    def new_hda(self, history, name, extension):
        hda = model.HistoryDatasetAssociation(name=name, extension=extension, history=history, create_dataset=True,
                                              sa_session=self.session, flush=False)
        history.add_dataset(hda)
        self.session.add(hda)
        self.session.commit()
        return hda

    def new_runner(self):
        params = dict(
            k8s_config_path=str(self.kubeconfig),
            ferry_url=f"s3://{self.bucket}/{self.prefix}",
            ferry_binary=str(podlib.FERRY),
            ferry_image=podlib.FERRY_IMAGE,
            ferry_sidecar="shared-pid",  # podman has no native sidecars
            ferry_env=self.s3.env(),
            ferry_credentials_secret=podlib.credentials_secret(),
            ferry_collect_wait=20,
        )
        runner = FerryKubernetesJobRunner(self.app, 1, **params)
        runner.work_queue = queue.Queue()  # what start() creates, without worker threads
        runner._pykube_api.session.mount(galaxy_stubs.KUBE_SERVER, self.api)
        return runner

    def submit(self):
        """Galaxy's handler hands the job to the runner; returns the Job the runner POSTed."""
        self.wrapper = JobWrapper(self.job, HandlerQueue(self.app))
        self.wrapper.job_runner_mapper.cached_job_destination = self.destination  # what the job mapper chose
        assert self.wrapper.enqueue(), "Galaxy's handler could not queue the job"  # object store, state queued
        self.runner.queue_job(self.wrapper)
        assert self.runner.wait_for_transfers(timeout=120), "stage still running after 120 s"
        self.session.refresh(self.job)
        assert self.job.state == model.Job.states.QUEUED, (self.job.state, self.job.info)
        self.ajs = self.runner.monitor_queue.get_nowait()
        assert len(self.api.created) == 1, self.api.created
        return self.api.created[-1]

    def complete(self):
        """Galaxy's monitor sees the Job ended; its worker threads finish the job (metadata, finish)."""
        assert self.runner.check_watched_item(self.ajs) is None, "Galaxy still watches the job"
        harness.drain(self.runner)
        self.session.expire_all()
        return self.job


class OneToolBox:
    """The toolbox of a Galaxy with one tool: what JobWrapper asks (tool_for_job)."""

    def __init__(self, tool):
        self.tool = tool

    def tool_for_job(self, job, exact=False, check_access=True):
        return self.tool if job.tool_id == self.tool.id else None

    def get_tool(self, tool_id, tool_version=None, exact=False, **kwds):
        return self.tool if tool_id == self.tool.id else None


class HandlerQueue:
    """What JobWrapper reads from the job handler's queue: the app, and a dispatcher (unused: the job's
    destination is set on the wrapper, as the job mapper would)."""

    def __init__(self, app):
        self.app = app
        self.dispatcher = SimpleNamespace(url_to_destination=None)


SCHEMA = AppSchema(GALAXY_CONFIG_SCHEMA_PATH, "galaxy").app_schema
DATATYPES_CONF = os.path.join(os.path.dirname(GALAXY_CONFIG_SCHEMA_PATH), "..", "sample", "datatypes_conf.xml.sample")


class GalaxyApp(GalaxyDataTestApp):
    """Galaxy's model test app (real SQLAlchemy model and database, disk object store, datatypes) with the
    settings a job handler reads: Galaxy's config schema defaults, except where noted."""

    def __init__(self, root, database_connection, store_by="uuid"):
        umask = os.umask(0o022)
        config = GalaxyDataTestConfig(root=root, database_connection=database_connection)
        os.umask(umask)  # GalaxyDataTestConfig leaves the process at 077; Galaxy's own config keeps it
        ours = dict(
            cleanup_job="never",  # not Galaxy's default (always): the tests read the job directory
            preserve_python_environment="always",  # not the default (legacy_only): set_metadata runs with this Python
            enable_celery_tasks=False,
            job_runner_monitor_sleep=1,
            umask=umask,
            tool_secret="ferry-test",
            tool_data_path=os.path.join(root, "tool-data"),
            galaxy_data_manager_data_path=os.path.join(root, "tool-data"),
            builds_file_path=os.path.join(root, "tool-data/shared/ucsc/builds.txt"),
            len_file_path=os.path.join(root, "tool-data/shared/ucsc/chrom"),
            environment_setup_file=None,
            # Set by GalaxyAppConfiguration's code, not in the schema:
            redact_email_in_job_name=False,
            track_jobs_in_database=True,
            config_file=None,
            object_store_store_by=store_by,  # files/1/2/3/dataset_UUID.dat, or files/000/dataset_ID.dat
        )
        for name, option in SCHEMA.items():  # every other option at Galaxy's default
            if name not in config.__dict__:
                setattr(config, name, ours.get(name, option.get("default")))
        config.__dict__.update(ours)
        super().__init__(config=config)
        # Galaxy's shipped datatypes (html, tabular...), and the metadata tool's dependencies (none).
        self.datatypes_registry.load_datatypes(root_dir=root, config=DATATYPES_CONF, use_converters=False,
                                               use_display_applications=False, use_build_sites=False)
        self.datatypes_registry.set_external_metadata_tool = Bunch(
            build_dependency_shell_commands=lambda job_directory, **kwargs: [],
            regenerate_imported_metadata_if_needed=lambda *args, **kwargs: None,
        )
        for d in (config.new_file_path, config.jobs_directory, config.file_path):
            os.makedirs(d, exist_ok=True)
        self.job_metrics = JobMetrics(None, None)  # Galaxy's default: the "core" plugin
        self.container_finder = ContainerFinder(AppInfo())
        self.toolbox = None
        self.name = "galaxy"
        # As galaxy_mock.MockApp sets them (that module needs mako, which Galaxy's job code does not).
        self.job_config = Bunch(
            dynamic_params=None,
            destinations={},
            assign_handler=lambda *args, **kwargs: None,
            get_job_tool_configurations=lambda ids, tool_classes: [Bunch(handler=Bunch())],
            limits=JobConfigurationLimits(),  # job_conf without limits
        )
        self.quota_agent = NoQuotaAgent()
        self.execution_timer_factory = Bunch(get_timer=StructuredExecutionTimer, galaxy_statsd_client=None)
        self.application_stack = ApplicationStack(app=self)
        self.tool_shed_registry = Bunch(tool_sheds={})
        self.biotools_metadata_source = None
        self.is_job_handler = True
        self.is_webapp = False
        self.error_reports = Bunch(default_error_plugin=Bunch(submit_report=lambda *args, **kwargs: None))
        self.job_search = None

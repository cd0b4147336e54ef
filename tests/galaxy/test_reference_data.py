"""Reference data per job: the index files a job's command line and config files name under
ferry_reference_roots are staged, each with its siblings of the same name prefix (a bwa index named
through a data table's .loc file), and nothing else of those directories. The paths come from Galaxy's
own data-table code (ToolDataTableManager reading a tool_data_table_conf.xml and its .loc files). A
directory is staged whole only when a data table lists it; a user's free text naming a directory (a
genome's folder, a reference root itself) stages none of it, and ferry_reference_max_bytes bounds what
one job may stage."""

import os

from galaxy.tool_util.data import ToolDataTableManager
from galaxy.tool_util.output_checker import DETECTED_JOB_STATE

from harness import GalaxyJob

BWA_SUFFIXES = ["", ".amb", ".ann", ".bwt", ".pac", ".sa"]
TABLES = """<tables>
  <table name="bwa_mem_indexes" comment_char="#">
    <columns>value, dbkey, name, path</columns>
    <file path="{tool_data}/bwa_mem_index.loc" />
  </table>
  <table name="rnastar_index2x_versioned" comment_char="#">
    <columns>value, dbkey, name, path, with_gene_model, version</columns>
    <file path="{tool_data}/rnastar_index2x_versioned.loc" />
  </table>
</tables>
"""


def reference_data(base):
    """A refs directory with two genomes' bwa indices and other files, and a data table naming them."""
    refs = base / "refs"
    for genome in ("hg38", "mm10"):
        index = refs / genome / "bwa_mem"
        index.mkdir(parents=True)
        for suffix in BWA_SUFFIXES:
            (index / f"{genome}.fa{suffix}").write_text(f"{genome}{suffix}\n")
        (index / f"{genome}.fa2.bwt").write_text("another index whose name only starts alike\n")
        (index / "README").write_text("not named by any job\n")
        star = refs / genome / "star"  # a STAR index is a directory, listed as such by its data table
        star.mkdir()
        for name in ("Genome", "SA", "SAindex"):
            (star / name).write_bytes(name.encode() * 1024)
    (refs / "hg38/genes.gtf").write_text("chr1\tgene\n")
    tool_data = base / "tool-data"
    tool_data.mkdir()
    (tool_data / "bwa_mem_index.loc").write_text(
        "#value\tdbkey\tname\tpath\n"
        + "".join(f"{g}\t{g}\t{g} genome\t{refs}/{g}/bwa_mem/{g}.fa\n" for g in ("hg38", "mm10")))
    (tool_data / "rnastar_index2x_versioned.loc").write_text(
        "".join(f"{g}\t{g}\t{g} STAR\t{refs}/{g}/star\t0\t2.7.4a\n" for g in ("hg38", "mm10")))
    conf = base / "tool_data_table_conf.xml"
    conf.write_text(TABLES.format(tool_data=tool_data))
    tables = ToolDataTableManager(tool_data_path=str(tool_data), config_filename=str(conf))
    return refs, tables


def test_a_job_gets_exactly_the_index_its_data_table_entry_names_and_that_index_s_siblings(s3, tmp_path):
    refs, tables = reference_data(tmp_path)
    index = tables["bwa_mem_indexes"].get_entry("dbkey", "hg38", "path")  # what the tool's from_data_table parameter gives
    cache = tmp_path / "node-cache"
    # hostPath DirectoryOrCreate would make it root's, mode 0755: the node's cache must exist, owned by the
    # uid ferry runs as (the tool's; here ferry's default 65532), before a job uses it.
    cache.mkdir()
    os.chown(cache, 65532, 65532)
    job = GalaxyJob(s3, tmp_path / "galaxy-side",
                    runner_params={"ferry_reference_roots": [str(refs)], "ferry_cache": f"hostpath:{cache}"})
    # A config file of the job names one more reference file (Galaxy writes configfiles to configs/).
    (job.job_dir / "configs").mkdir(parents=True)
    (job.job_dir / "configs/params.json").write_text(f'{{"annotation": "{refs}/hg38/genes.gtf"}}')
    # Directories named only at run time ($(dirname ...)): a directory named in the command is staged whole.
    job.submit(f"ls \"$(dirname {index})\"; cat {index}.amb '{index}.bwt' > {{output}}; "
               f"ls \"$(dirname {index})/../../mm10\"")

    staged = {d["path"] for d in job.s3.get_json(job.bucket, job.ajs.ferry_manifest_url.split("/", 3)[3])["indices"]}
    assert staged == {f"{index}{s}" for s in BWA_SUFFIXES} | {f"{refs}/hg38/genes.gtf", str(job.tool_dir)}
    pod = job.run_pod()
    outcome = job.complete()

    assert (outcome.call, outcome.detected_state) == ("finish", DETECTED_JOB_STATE.GENERIC_ERROR), \
        "the job ran; `ls` of the unnamed genome failed"
    assert outcome.tool_stdout.splitlines() == [f"hg38.fa{s}" for s in BWA_SUFFIXES], \
        "exactly the named index, siblings included"
    assert "mm10" in outcome.tool_stderr and "No such file or directory" in outcome.tool_stderr, outcome.tool_stderr
    assert job.output.read_text() == "hg38.amb\nhg38.bwt\n"
    assert any(cache.joinpath("objects").rglob("*")), "the index went through the node cache"
    assert pod.exit_codes["k8s"] != 0


def test_reference_paths_with_spaces_quotes_or_dot_dots_stage_what_they_name_and_nothing_outside(tmp_path):
    from ferry_galaxy.runner import reference_files

    refs = tmp_path / "refs"
    spaced = refs / "my genome/bwa"
    spaced.mkdir(parents=True)
    for suffix in ("", ".bwt", ".sa"):
        (spaced / f"g 1.fa{suffix}").write_text("x\n")
    (tmp_path / "secret.txt").write_text("outside every reference root\n")
    (refs / "plain.fa").write_text(">a\n")
    texts = [
        f"bwa mem '{spaced}/g 1.fa' reads.fq > out.sam",
        f'{{"ref": "{refs}/plain.fa", "escape": "{refs}/../secret.txt"}}',
        f"cat {refs}/../secret.txt {refs}/absent.fa",
    ]

    found = reference_files(texts, [str(refs)])

    assert found == [f"{spaced}/g 1.fa", f"{spaced}/g 1.fa.bwt", f"{spaced}/g 1.fa.sa", f"{refs}/plain.fa"]


def test_a_symlink_inside_a_reference_root_never_takes_staging_outside_it(tmp_path):
    from ferry_galaxy.runner import reference_files

    refs = tmp_path / "refs"
    (refs / "hg38").mkdir(parents=True)
    (refs / "hg38/hg38.fa").write_text(">a\n")
    config = tmp_path / "galaxy/server/config"
    config.mkdir(parents=True)
    (config / "galaxy.yml").write_text("id_secret: s3cr3t\n")
    (tmp_path / "shadow").write_text("outside\n")
    os.symlink(tmp_path / "galaxy/server", refs / "shared")  # a directory link out of the root
    os.symlink(tmp_path / "shadow", refs / "hg38/hg38.fa.amb")  # a sibling that links out of it
    os.symlink(refs / "hg38", refs / "current")  # a link that stays inside: fine
    texts = [f"grep x {refs}/shared/config/galaxy.yml", f"bwa mem {refs}/current/hg38.fa reads.fq"]

    found = reference_files(texts, [str(refs)])

    assert found == [f"{refs}/current/hg38.fa"], found


def test_a_reference_root_that_is_itself_a_symlink_still_serves_its_files(tmp_path):
    from ferry_galaxy.runner import reference_files

    (tmp_path / "real/bwa").mkdir(parents=True)
    (tmp_path / "real/bwa/g.fa").write_text(">a\n")
    os.symlink(tmp_path / "real", tmp_path / "refs")  # e.g. /cvmfs/data.galaxyproject.org

    found = reference_files([f"bwa mem {tmp_path}/refs/bwa/g.fa r.fq"], [f"{tmp_path}/refs"])

    assert found == [f"{tmp_path}/refs/bwa/g.fa"], found


def staged_indices(job):
    manifest = job.s3.get_json(job.bucket, job.ajs.ferry_manifest_url.split("/", 3)[3])
    return {d["path"]: d for d in manifest["indices"]}


def test_free_text_naming_a_reference_root_or_directory_stages_none_of_it_but_a_data_table_directory_is_whole(
        s3, tmp_path, caplog):
    refs, tables = reference_data(tmp_path)
    star = tables["rnastar_index2x_versioned"].get_entry("dbkey", "hg38", "path")  # the tool's select list
    job = GalaxyJob(s3, tmp_path / "galaxy-side", runner_params={"ferry_reference_roots": [str(refs)]})
    job.app.tool_data_tables = tables  # Galaxy's app holds the data tables it read from the .loc files
    # A user's text parameters, pasted into the command: the root itself, genome folders, a folder with `.`.
    free_text = f"{refs}/. '{refs}/mm10' {refs}/mm10/bwa_mem/ {refs}/hg38/bwa_mem/.."

    # In the pod: the STAR index, and nothing of the folders the free text named (paths built at run time).
    job.submit(f"echo {free_text} > /dev/null; ls {star} > {{output}}; d=$(dirname {star}); "
               "test ! -e $d/genes.gtf && test ! -e $d/bwa_mem && test ! -e $d/../mm10")

    staged = staged_indices(job)
    assert set(staged) == {star, str(job.tool_dir)}, set(staged)
    assert staged[star]["kind"] == "dir" and sorted(f["path"] for f in staged[star]["files"]) == \
        ["Genome", "SA", "SAindex"], "a data table's directory is staged whole"
    for skipped in (str(refs), f"{refs}/mm10", f"{refs}/mm10/bwa_mem", f"{refs}/hg38"):
        assert f"not staging {skipped} as reference data" in caplog.text, caplog.text
    pod = job.run_pod()
    outcome = job.complete()
    assert (outcome.call, outcome.detected_state) == ("finish", DETECTED_JOB_STATE.OK), (outcome, pod.logs)
    assert job.output.read_text().split() == ["Genome", "SA", "SAindex"]


def test_reference_data_over_ferry_reference_max_bytes_fails_the_job_before_anything_is_uploaded(s3, tmp_path):
    refs, tables = reference_data(tmp_path)
    star = tables["rnastar_index2x_versioned"].get_entry("dbkey", "hg38", "path")
    index = tables["bwa_mem_indexes"].get_entry("dbkey", "hg38", "path")
    job = GalaxyJob(s3, tmp_path / "galaxy-side", runner_params={
        "ferry_reference_roots": [str(refs)], "ferry_reference_max_bytes": "8Ki"})
    job.app.tool_data_tables = tables

    job.queue(f"STAR --genomeDir {star} && bwa mem {index} > {{output}}")

    [outcome] = job.wrapper.outcomes
    assert outcome.call == "fail"
    assert "the job names 15.0 KiB of reference data under ferry_reference_roots, more than " \
        f"ferry_reference_max_bytes (8.0 KiB): {star} (15.0 KiB), {index}.amb (9 bytes)" in outcome.message, \
        outcome.message
    assert "raise ferry_reference_max_bytes" in outcome.message
    assert job.api.created == []
    listed = s3.client().list_objects_v2(Bucket=job.bucket, Prefix=job.prefix)
    assert listed.get("KeyCount", 0) == 0, "nothing was uploaded"


def test_reference_data_the_pod_mounts_itself_is_not_counted_against_ferry_reference_max_bytes(s3, tmp_path):
    refs, tables = reference_data(tmp_path)
    star = tables["rnastar_index2x_versioned"].get_entry("dbkey", "hg38", "path")
    index = tables["bwa_mem_indexes"].get_entry("dbkey", "hg38", "path")
    job = GalaxyJob(s3, tmp_path / "galaxy-side", runner_params={
        "ferry_reference_roots": [str(refs)], "ferry_reference_max_bytes": "8Ki",
        "k8s_persistent_volume_claims": f"refs-claim:{star}:r"})  # the STAR index comes from a volume
    job.app.tool_data_tables = tables

    job.submit(f"STAR --genomeDir {star} && bwa mem {index} > {{output}}")

    assert set(staged_indices(job)) == {f"{index}{s}" for s in BWA_SUFFIXES} | {str(job.tool_dir)}


def test_a_data_table_directory_and_a_file_in_it_named_by_the_command_are_staged_and_counted_once(s3, tmp_path):
    refs, tables = reference_data(tmp_path)
    star = tables["rnastar_index2x_versioned"].get_entry("dbkey", "hg38", "path")
    (refs / "hg38/star/genes.gtf").write_bytes(b"chr1\tgene\n" * 400)  # 4000 bytes; the index: 15 KiB
    job = GalaxyJob(s3, tmp_path / "galaxy-side", runner_params={
        "ferry_reference_roots": [str(refs)], "ferry_reference_max_bytes": "19Ki"})  # once: 18.9 KiB; twice: 22.8 KiB
    job.app.tool_data_tables = tables

    # STAR names the index directory and, on its own, the annotation inside it.
    job.submit(f": STAR --genomeDir '{star}' --sjdbGTFfile {star}/genes.gtf; "
               f"ls {star} > {{output}}; wc -c < {star}/genes.gtf >> {{output}}")

    staged = staged_indices(job)
    assert set(staged) == {star, str(job.tool_dir)}, "the file travels inside its directory, not on its own"
    assert sorted(f["path"] for f in staged[star]["files"]) == ["Genome", "SA", "SAindex", "genes.gtf"]
    pod = job.run_pod()
    outcome = job.complete()
    assert (outcome.call, outcome.detected_state) == ("finish", DETECTED_JOB_STATE.OK), (outcome, pod.logs)
    assert job.output.read_text().split() == ["Genome", "SA", "SAindex", "genes.gtf", "4000"]

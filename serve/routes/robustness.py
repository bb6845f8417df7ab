"""Robustness report jobs: submit, poll, list, and read the finished report as JSON or HTML."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from dyntta.contract import DatasetNotFoundError, resolve_conditions
from dyntta.evaluate.schema import Report
from serve.deps import BackendDep, JobsDep, SettingsDep, request_fingerprint, require_api_key
from serve.errors import BadRequest, Conflict, NotFound, UnsupportedMediaType
from serve.evalset import BUILTIN_NAME, ZipLimits, builtin_compatible, builtin_files, read_imagefolder_zip
from serve.jobs import REPORT_HTML, REPORT_JSON, Job, JobManager, JobParams
from serve.routes import UPLOAD_ERRORS
from serve.schemas import ErrorResponse, JobList, JobStatus, RobustnessReport

# every job route needs the key when one is set: a job is visible only to the key that created it
router = APIRouter(prefix="/v1/robustness", tags=["robustness"], dependencies=[Depends(require_api_key)])

JOB_ID = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="job id as returned on submission")]
_ZIP_TYPES = {
    "",
    "application/zip",
    "application/x-zip-compressed",
    "application/x-zip",
    "application/octet-stream",
    "multipart/x-zip",
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "no such job"}}
_REPORT_ERRORS: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    409: {"model": ErrorResponse, "description": "job not finished"},
}


def job_status(job: Job) -> JobStatus:
    done = job.status == "done"
    return JobStatus(
        id=job.id,
        status=job.status,
        progress=job.progress,
        message=job.message,
        created=job.created,
        updated=job.updated,
        source=job.source,
        num_images=job.num_images,
        corruptions=job.params.corruptions,
        severities=job.params.severities,
        with_enhancer=job.params.with_enhancer,
        seed=job.params.seed,
        error=job.error,
        report_url=f"/v1/robustness/{job.id}/report" if done else None,
        report_html_url=f"/v1/robustness/{job.id}/report.html" if done else None,
    )


def owner_of(request: Request) -> str:
    """The fingerprint of the API key this request authenticated with ('' without a key): jobs are stored
    and read under it, so one key's jobs are invisible to another's. The key itself is never stored. With
    keys set, a request without a matching one never gets here (the router's ``require_api_key``)."""
    return request_fingerprint(request) or ""


def _check_table(table: str | None) -> str | None:
    if table is None or not table.strip():
        return None
    from dyntta.corruptions.tables import TABLE_NAMES

    if table not in TABLE_NAMES:
        raise BadRequest(f"unknown corruption parameter table {table!r}; expected one of {list(TABLE_NAMES)} or none")
    return table


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.replace(";", ",").replace(" ", ",").split(",") if part.strip()]


@router.post(
    "",
    response_model=JobStatus,
    status_code=202,
    responses={**UPLOAD_ERRORS, 429: {"model": ErrorResponse, "description": "too many jobs"}},
    summary="Start a robustness report job on an uploaded ImageFolder zip or the built-in set",
)
async def submit(
    request: Request,
    backend: BackendDep,
    settings: SettingsDep,
    jobs: JobsDep,
    file: Annotated[
        UploadFile | None,
        File(
            description="zip of an ImageFolder: [root/]class_name/image.png; class folders must match the "
            "model's labels (case and punctuation ignored, or the class index). Omit it to use "
            "the built-in set"
        ),
    ] = None,
    corruptions: Annotated[
        str,
        Form(
            description="comma-separated corruption names or groups (noise, blur, weather, digital, extra, core, all)",
            max_length=2000,
        ),
    ] = "all",
    severities: Annotated[str, Form(description="comma-separated severities 1-5", max_length=100)] = "1,2,3,4,5",
    num_images: Annotated[int, Form(ge=1, description="built-in set: the first N Fashion-MNIST test images")] = 500,
    seed: Annotated[int, Form(ge=0, le=2**31 - 1, description="corruption seed")] = 0,
    table: Annotated[
        str | None, Form(max_length=100, description="corruption parameter table (default: by image size)")
    ] = None,
    with_enhancer: Annotated[bool, Form(description="also evaluate enhancer + recognizer")] = True,
) -> JobStatus:
    try:
        names, levels = resolve_conditions(_split(corruptions), _split(severities))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    table = _check_table(table)
    await run_in_threadpool(jobs.check_capacity)  # before reading, let alone decoding, the upload: 429 fast
    owner = owner_of(request)
    info = await backend.model_info(settings.recognizer_model)
    labels = list(info.labels or ())
    params = JobParams(
        corruptions=list(names),
        severities=list(levels),
        seed=seed,
        table=table,
        with_enhancer=with_enhancer,
        image_size=info.input_size,
    )

    if file is not None and (file.filename or file.size):
        kind = (file.content_type or "").split(";")[0].strip().lower()
        data = await file.read()
        await file.close()
        if kind not in _ZIP_TYPES or not data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            raise UnsupportedMediaType(f"{file.filename}: not a zip archive (content type {kind!r})")
        limits = ZipLimits(
            settings.max_zip_files,
            settings.max_zip_uncompressed_bytes,
            settings.max_image_pixels,
            settings.max_zip_pixels,
        )
        name = (file.filename or "upload.zip").replace("/", "_")[-100:]
        dataset = await run_in_threadpool(
            read_imagefolder_zip,
            data,
            size=info.input_size,
            labels=labels,
            limits=limits,
            name=name,
            policy=info.preprocess,
        )
        del data
        params.classes = list(dataset.classes)
        job = await run_in_threadpool(
            partial(jobs.submit, images=dataset.images, labels=dataset.labels, owner=owner),
            name,
            len(dataset),
            params,
        )
    else:
        if not builtin_compatible(labels):
            raise BadRequest(
                "the built-in evaluation set is Fashion-MNIST, but the served model's labels "
                "are "
                f"{labels}; upload a zip of labelled images instead"
            )
        try:
            builtin_files()
        except DatasetNotFoundError as exc:
            raise BadRequest(f"{exc}; or upload a zip of labelled images") from None
        count = min(num_images, settings.builtin_max_images)
        job = await run_in_threadpool(partial(jobs.submit, owner=owner), BUILTIN_NAME, count, params)
    return job_status(job)


@router.get("", response_model=JobList, summary="List robustness jobs, newest first")
async def list_jobs(request: Request, jobs: JobsDep, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> JobList:
    found = await run_in_threadpool(jobs.list, limit, owner_of(request))
    return JobList(jobs=[job_status(j) for j in found])


def _get(jobs: JobManager, job_id: str, owner: str) -> Job:
    job = jobs.get(job_id, owner)
    if job is None:  # another key's job is "not found" too: its existence is not disclosed
        raise NotFound(f"no robustness job {job_id}")
    return job


def _finished(jobs: JobManager, job_id: str, filename: str, owner: str) -> tuple[Job, str]:
    job = _get(jobs, job_id, owner)
    if job.status != "done":
        raise Conflict(
            f"job {job_id} is {job.status}; the report exists once it is done"
            + (f" ({job.error})" if job.error else "")
        )
    path = jobs.report_dir(job_id) / filename
    if not path.is_file():
        raise NotFound(f"the report file of job {job_id} is missing from {jobs.reports_dir}")
    return job, path.read_text(encoding="utf-8")


@router.get("/{job_id}", response_model=JobStatus, responses=_NOT_FOUND, summary="Status and progress of a job")
async def get_job(request: Request, job_id: JOB_ID, jobs: JobsDep) -> JobStatus:
    return job_status(await run_in_threadpool(_get, jobs, job_id, owner_of(request)))


@router.get(
    "/{job_id}/report",
    response_model=RobustnessReport,
    responses=_REPORT_ERRORS,
    summary="The finished report (dyntta.evaluate's JSON format)",
)
async def get_report(request: Request, job_id: JOB_ID, jobs: JobsDep) -> RobustnessReport:
    job, text = await run_in_threadpool(_finished, jobs, job_id, REPORT_JSON, owner_of(request))
    return RobustnessReport(job=job_status(job), report=Report.model_validate_json(text))


@router.get(
    "/{job_id}/report.html",
    response_class=HTMLResponse,
    responses=_REPORT_ERRORS,
    summary="The finished report as an HTML page (tables and heatmaps)",
)
async def get_report_html(request: Request, job_id: JOB_ID, jobs: JobsDep) -> HTMLResponse:
    _, text = await run_in_threadpool(_finished, jobs, job_id, REPORT_HTML, owner_of(request))
    return HTMLResponse(text)

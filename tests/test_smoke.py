from tests.helpers import complete, create_job, progress


async def test_job_lifecycle(client):
    job = await create_job(client)
    assert job["status"] == "pending"
    running = await progress(client, job["id"], 40)
    assert running["status"] == "running"
    done = await complete(client, job["id"])
    assert done["status"] == "completed" and done["progress"] == 100

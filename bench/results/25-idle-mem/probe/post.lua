wrk.method = "POST"
wrk.body = '{"id":"1","version":"1.0","params":{"temperature":21,"humidity":40},"method":"thing.event.property.post"}'
wrk.headers["Content-Type"] = "application/json"

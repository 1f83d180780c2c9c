-- wrk script of perf/bench_saturation.py: POST the file named in env BODY with content type env CTYPE;
-- env DTYPE and SHAPE, when set, become the X-Tensor-Dtype and X-Tensor-Shape headers (raw bodies).
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("CTYPE") or "application/json"
local dtype, shape = os.getenv("DTYPE"), os.getenv("SHAPE")
if dtype and dtype ~= "" then
  wrk.headers["X-Tensor-Dtype"] = dtype
  wrk.headers["X-Tensor-Shape"] = shape
end

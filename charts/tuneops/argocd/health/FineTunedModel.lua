-- Argo CD health check for tuneops.io/FineTunedModel (resource.customizations.health.tuneops.io_FineTunedModel).
-- Progressing until the operator has written status for the current generation; then Ready=True is Healthy,
-- Ready=False with a reason a person must act on is Degraded, and any other reason is still Progressing.
local terminal = {
  InvalidSpec = true,
  IncompatibleAdapter = true,
  JobFailed = true,
  OOMKilled = true,
  DeadlineExceeded = true,
  QualityGateFailed = true,
  SourceNotFound = true,
  AdapterLoadFailed = true,
}

local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the tuneops operator to report status"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the tuneops operator to observe generation " .. tostring(generation)
  return hs
end

local ready = nil
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    ready = condition
  end
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "No Ready condition yet"
  return hs
end

local reason = ready.reason or ""
local message = ready.message or ""
if message == "" then
  message = reason
end

if ready.status == "True" then
  hs.status = "Healthy"
elseif ready.status == "False" and terminal[reason] then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = message
return hs

-- Argo CD health check for maas.dev/MaaSJob (maas-operator).
--
-- It reads the summary the operator writes for GitOps tools, so Argo CD and Flux (kstatus) agree:
--   Degraded     Stalled is True: the job failed (a spec edit is the way out)
--   Suspended    Suspended is True: runPolicy.suspend, no workers
--   Progressing  the operator has not seen this generation yet, or Reconciling is True: planning, waiting
--                for GPUs (Unschedulable), starting workers, restarting a gang, or a scale that does not fit yet
--   Healthy      Reconciling is False otherwise: every worker runs (Ready), or training Succeeded
-- The message is the deciding condition's reason and message, as `kubectl maas status` shows them.
local health = {}

local function condition(wanted)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, found in ipairs(obj.status.conditions) do
    if found.type == wanted then
      return found
    end
  end
  return nil
end

local function say(status, found)
  health.status = status
  health.message = found.reason
  if found.message ~= nil and found.message ~= "" then
    health.message = found.reason .. ": " .. found.message
  end
  return health
end

local generation = obj.metadata.generation
local observed = nil
if obj.status ~= nil then
  observed = obj.status.observedGeneration
end
if generation ~= nil and (observed == nil or observed < generation) then
  health.status = "Progressing"
  health.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return health
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  return say("Degraded", stalled)
end
local suspended = condition("Suspended")
if suspended ~= nil and suspended.status == "True" then
  return say("Suspended", suspended)
end
local reconciling = condition("Reconciling")
if reconciling == nil then
  health.status = "Progressing"
  health.message = "Waiting for the operator's status"
  return health
end
if reconciling.status == "True" then
  return say("Progressing", reconciling)
end
return say("Healthy", reconciling)

-- Orthanc -> Segnode auto-routing: every stable CT or MR series is sent to the modality "segnode".
-- Segnode's results (SEG, SR) come back into the same study and are not forwarded again.
-- Install: list this file in Orthanc's "LuaScripts" and register Segnode in "DicomModalities"
-- (see orthanc.json beside this file); "StableAge" sets the quiet time before a series counts as stable.

function OnStableSeries(seriesId, tags, metadata)
  local modality = tags['Modality']
  if modality == 'CT' or modality == 'MR' then
    print('segnode: forwarding ' .. modality .. ' series ' .. seriesId)
    -- a store job for the whole series (SendToModality takes single instances only)
    RestApiPost('/modalities/segnode/store',
                '{"Resources": ["' .. seriesId .. '"], "Asynchronous": true, "Priority": 0}')
  end
end

-- Sample spend for the compose stack's demo profile: 2,000 requests in each of the last 6 complete UTC hours.
INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, api_key, spend, prompt_tokens, completion_tokens,
    total_tokens, "startTime", "endTime", model, model_group, custom_llm_provider, "user", team_id, end_user,
    metadata, request_tags, status, organization_id)
SELECT 'compose-' || h || '-' || i, 'acompletion', md5('key' || mod(i, 12)) || md5('k2' || mod(i, 12)),
       round(((10 + mod(i * 7919, 2000)) * (1 + mod(i, 7)) * 0.00000123)::numeric, 12)::float8,
       10 + mod(i * 7919, 2000), (1 + mod(i, 7)) * 37, 10 + mod(i * 7919, 2000) + (1 + mod(i, 7)) * 37,
       date_trunc('hour', now() AT TIME ZONE 'UTC') - make_interval(hours => h) + make_interval(secs => i * 1.7),
       date_trunc('hour', now() AT TIME ZONE 'UTC') - make_interval(hours => h) + make_interval(secs => i * 1.7 + 2),
       'model-' || mod(i, 5), 'group-' || mod(i, 5), (ARRAY['openai','anthropic','bedrock'])[1 + mod(i, 3)],
       'user-' || mod(i, 40), 'team-' || mod(i, 6), 'customer-' || mod(i, 100),
       jsonb_build_object('user_api_key_team_alias', 'Team ' || mod(i, 6), 'user_api_key_alias', 'key-' || mod(i, 12)),
       jsonb_build_array('taskName:task-' || mod(i, 8)), 'success', 'org-' || mod(i, 2)
FROM generate_series(1, 6) AS h, generate_series(0, 1999) AS i;

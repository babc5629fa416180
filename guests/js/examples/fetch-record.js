// Example step: fetches one record (a GitHub-style issue) and reshapes it.
// The JavaScript twin of the Rust `github-issue` example.
//
// Action `fetch-record`, input `{owner, repo, number}`. Needs the property
// `github_api` (the API base URL, such as `https://api.github.com`), the
// secret alias `github` (a token placed as `Authorization: Bearer {}`) and a
// `net` grant for the API host.
//
// Output `{number, title, author, state, labels, url, token_hint}`. The
// record's body stands for a confidential field: the step marks it with
// `mask.mark` and returns it as `token_hint`, so the host stores and shows
// it as `***` (and masks it in the log line below too).

import { InvalidInput, auth, errorForStatus, fetch, log, mask, properties, secrets, step } from '../sdk/wrun.js';

async function fetchRecord(input) {
  const { owner, repo, number } = input ?? {};
  if (typeof owner !== 'string' || typeof repo !== 'string' || !Number.isInteger(number)) {
    throw new InvalidInput('expected {owner: string, repo: string, number: integer}');
  }
  const base = properties.require('github_api').replace(/\/+$/, '');
  const github = secrets.get('github');
  const path = [owner, repo].map(encodeURIComponent).join('/');
  log.info(`fetching record ${owner}/${repo}#${number}`);

  const response = await fetch(
    `${base}/repos/${path}/issues/${number}`,
    auth(
      {
        headers: {
          accept: 'application/vnd.github+json',
          'user-agent': 'wrun-fetch-record-js/0.1',
          'x-github-api-version': '2022-11-28',
        },
      },
      github,
    ),
  );
  if (response.status === 404) {
    throw new Error(`record ${owner}/${repo}#${number} not found`);
  }
  const record = await (await errorForStatus(response)).json();

  const confidential = String(record.body ?? '');
  mask.mark(confidential);
  log.info(`record ${record.number}: "${record.title}", body ${confidential}`);
  return {
    number: record.number,
    title: record.title,
    author: record.user?.login ?? null,
    state: record.state,
    labels: (record.labels ?? []).map((label) => label.name),
    url: record.html_url,
    token_hint: confidential,
  };
}

export const actions = step({ 'fetch-record': fetchRecord });

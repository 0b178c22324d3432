// Smoothing for the Plots tab and the Compare page: an exponential moving
// average, debiased so the first values are not pulled toward zero (as W&B and
// TensorBoard smooth); a weight of 0 leaves the series as it is.
export function smoothed(values, weight) {
  let average = 0;
  return values.map((value, index) => {
    average = average * weight + (1 - weight) * value;
    return average / (1 - weight ** (index + 1));
  });
}

// A slider (0 to 0.99) whose value is kept in the URL as ?smooth=, so a reload or a
// shared link draws the same; onChange runs on every move.
export function smoothingSlider(input, shown, onChange) {
  const asked = Number(new URLSearchParams(location.search).get("smooth"));
  if (asked > 0 && asked < 1) input.value = String(asked);
  shown.textContent = Number(input.value).toFixed(2);
  input.addEventListener("input", () => {
    shown.textContent = Number(input.value).toFixed(2);
    const url = new URL(location.href);
    if (Number(input.value) > 0) url.searchParams.set("smooth", input.value);
    else url.searchParams.delete("smooth");
    history.replaceState(null, "", url);
    onChange();
  });
  return () => Number(input.value);
}

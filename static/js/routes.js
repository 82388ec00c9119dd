// Route editor: a removed host row is greyed out (its "Remove" box is what the server reads).
document.addEventListener("change", (event) => {
  const box = event.target;
  if (box instanceof HTMLInputElement && box.name.endsWith("-DELETE")) {
    box.closest("tr")?.classList.toggle("removed", box.checked);
  }
});
